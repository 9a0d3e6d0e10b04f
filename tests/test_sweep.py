"""`nin sweep`: Hydra's real sweepers and launchers on the tiniest runs, the summary, failures and re-runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nin_cli.sweep import job_dirs

# One epoch of two steps on 8×8 synthetic images, one thread: each job trains in well under a second.
TINY = ["dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,8,8]", "dataset.size=64",
        "dataset.val_size=16", "trainer.batch_size=16", "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
        "trainer.num_threads=1", "trainer.progress=none", "trainer.device=cpu"]
GRID = ["model.dropout=0,0.5", "head=gap,fc"]
GRID_JOBS = {"model.dropout=0 head=gap", "model.dropout=0 head=fc", "model.dropout=0.5 head=gap",
             "model.dropout=0.5 head=fc"}


def summary_rows(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_rows_match_runs(sweep: Path, n: int) -> list[dict]:
    """summary.csv has one row per job and its numbers are exactly the job's summary.json."""
    rows = summary_rows(sweep)
    assert sorted(r["job"] for r in rows) == sorted(p.name for p in job_dirs(sweep)) and len(rows) == n
    for row in rows:
        run = json.loads((sweep / row["job"] / "summary.json").read_text())
        assert row["status"] == "done", row
        assert float(row["best_val_error"]) == run["best_val_error"]
        assert float(row["test_error"]) == run["test_error"]
        assert int(row["params"]) == run["params"]
        assert float(row["wall_time_s"]) == run["wall_time_s"]
    return rows


def session_hparams(tb: Path) -> dict:
    """The hyper-parameters of the run's TensorBoard HParams session."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(tb))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}


def test_grid_summary_hparams_and_rerun(nin, tmp_path):
    sweep = tmp_path / "sweep"
    result = nin("sweep", *TINY, *GRID, f"hydra.sweep.dir={sweep}")
    assert result.code == 0, result.err
    assert [p.name for p in job_dirs(sweep)] == ["0", "1", "2", "3"]
    rows = assert_rows_match_runs(sweep, 4)
    assert {r["overrides"] for r in rows} == GRID_JOBS
    for name in ("config.yaml", "provenance.json", "train.log", "metrics.jsonl", "checkpoints/last.pt"):
        assert (sweep / "3" / name).is_file(), name
    markdown = (sweep / "summary.md").read_text()
    assert markdown.count("| done |") == 4 and "Best on validation" in markdown
    assert result.out.count(" done ") == 4 and "summary.md" in result.out
    for row in rows:
        hparams = session_hparams(sweep / row["job"] / "tb")
        dropout, head = (kv.split("=")[1] for kv in row["overrides"].split())
        assert hparams["model.dropout"] == float(dropout) and hparams["head.type"] == head
        assert hparams["dataset.image_shape"] == "[3, 8, 8]"  # list-valued keys too, as text

    # Re-run into the same directory: finished jobs are skipped, an unfinished one (no summary.json) resumes.
    finished = {p: p.stat().st_mtime_ns for p in sweep.glob("[012]/summary.json")}
    (sweep / "3" / "summary.json").unlink()
    again = nin("sweep", *TINY, *GRID, f"hydra.sweep.dir={sweep}")
    assert again.code == 0, again.err
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert "finished already" in (sweep / "0" / "train.log").read_text()
    assert len((sweep / "3" / "metrics.jsonl").read_text().splitlines()) == 1  # resumed at its end, not retrained
    assert len(json.loads((sweep / "3" / "provenance.json").read_text())["resumes"]) == 1
    assert_rows_match_runs(sweep, 4)

    (sweep / "summary.csv").unlink()
    shown = nin("sweep", "--summary", str(sweep))
    assert shown.code == 0, shown.err
    assert shown.out.count(" done ") == 4 and len(summary_rows(sweep)) == 4


def test_grid_with_the_joblib_launcher(nin, tmp_path):
    sweep = tmp_path / "sweep"
    result = nin("sweep", *TINY, *GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 f"hydra.sweep.dir={sweep}")
    assert result.code == 0, result.err
    assert {r["overrides"] for r in assert_rows_match_runs(sweep, 4)} == GRID_JOBS


def test_failing_jobs_are_marked_and_the_others_run(nin, tmp_path):
    sweep = tmp_path / "sweep"
    result = nin("sweep", *TINY, "optim.lr=1e30,-1,0.05", f"hydra.sweep.dir={sweep}")
    assert result.code == 5, result.err  # the first failure's exit code: divergence
    assert result.err_lines[-1].startswith("nin: error: 2 of 3 jobs failed; job 0 (optim.lr=1e+30): training diverged")
    rows = {r["job"]: r for r in summary_rows(sweep)}
    assert rows["0"]["status"] == "failed" and "diverged" in rows["0"]["reason"]
    assert rows["1"]["status"] == "failed" and rows["1"]["reason"].startswith("optim.lr=-1.0: out of range")
    assert rows["2"]["status"] == "done" and (sweep / "2" / "summary.json").is_file()
    outcome = json.loads((sweep / "1" / "outcome.json").read_text())
    assert outcome["status"] == "failed" and outcome["exit_code"] == 2
    assert "job 0 failed: training diverged" in result.out


def test_submitit_local_runs_a_two_job_sweep(nin, tmp_path):
    sweep = tmp_path / "sweep"
    result = nin("sweep", *TINY, "head=gap,fc", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}")
    assert result.code == 0, result.err
    assert {r["overrides"] for r in assert_rows_match_runs(sweep, 2)} == {"head=gap", "head=fc"}


def test_a_sweep_job_of_two_processes(nin, tmp_path):
    sweep = tmp_path / "sweep"
    result = nin("sweep", *TINY, "head=gap,fc", "trainer.devices=2", f"hydra.sweep.dir={sweep}")
    assert result.code == 0, result.err
    assert {r["overrides"] for r in assert_rows_match_runs(sweep, 2)} == {"head=gap", "head=fc"}
    assert len(list((sweep / "0" / "tb").glob("events.*"))) == 2  # rank 0's run and hparams files only


@pytest.mark.parametrize("name, jobs", [("dropout", 4), ("widths", 3), ("micro_depth", 4), ("heads", 3)])
def test_ready_sweeps_compose_and_validate(nin, name, jobs):
    result = nin("sweep", f"+sweep={name}", "--dry-run")
    assert result.code == 0, result.err
    assert f"sweeper basic, launcher basic, {jobs} jobs" in result.out and "fails" not in result.out
    assert not Path("outputs").exists()


def test_slurm_example_composes(nin):
    result = nin("sweep", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "head=gap,fc", "--dry-run")
    assert result.code == 0, result.err
    assert "launcher slurm, 2 jobs" in result.out


def test_bad_sweeps_exit_2_before_anything_runs(nin, tmp_path, monkeypatch):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    for args, expected in [(["model.dropoutt=0,0.5"], "unknown config key 'model.dropoutt' (did you mean"),
                           (["head=gap,nope"], "head=nope: no such option"),
                           (["hydra/launcher=nope"], "hydra/launcher=nope: no such option")]:
        result = nin("sweep", *args)
        assert result.code == 2 and len(result.err_lines) == 1 and expected in result.err, result.err
    train = nin("train", "model.dropout=0,0.5")
    assert train.code == 2 and "nin sweep" in train.err
    assert not (tmp_path / "outputs").exists()

    options = ConfigLoaderImpl.get_group_options
    monkeypatch.setattr(ConfigLoaderImpl, "get_group_options",
                        lambda self, *a, **k: [o for o in options(self, *a, **k) if o != "joblib"])
    missing = nin("sweep", "hydra/launcher=joblib", "head=gap,fc")
    assert missing.code == 2 and "pip install -e '.[sweep]'" in missing.err_lines[-1]


# ------------------------------------------------------------------ seeds aggregated in the summary (fabricated)


def fake_job(sweep: Path, job: str, overrides: list[str], summary: dict | None = None,
             failure: str | None = None) -> Path:
    """A sweep job directory as `nin sweep` leaves it: .hydra/overrides.yaml, then summary.json or failure.json."""
    run = sweep / job
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps({"params": 1000, "epochs": 3, "stopped_early": False,
                                                      "device": "cpu", **summary}))
    if failure is not None:
        (run / "failure.json").write_text(json.dumps({"reason": failure, "exit_code": 5}))
    return run


@pytest.fixture
def seeded_sweep(tmp_path) -> Path:
    """model.dropout=0,0.5 × trainer.seed=0,1,2; dropout 0.5's seed 2 diverged, its seed 1 has no validation."""
    sweep = tmp_path / "sweep"
    numbers = {("0", 0): (9.3, 10.3, 100.0), ("0", 1): (9.5, 10.5, 110.0), ("0", 2): (9.7, 10.7, 120.0),
               ("0.5", 0): (11.0, 12.0, 200.0), ("0.5", 1): (None, 13.0, 210.0)}
    job = 0
    for dropout in ("0", "0.5"):
        for seed in range(3):
            overrides = ["dataset=synthetic", f"model.dropout={dropout}", f"trainer.seed={seed}"]
            values = numbers.get((dropout, seed))
            if values is None:
                fake_job(sweep, str(job), overrides, failure="training diverged at step 3")
            else:
                val, test, wall = values
                fake_job(sweep, str(job), overrides, {"best_val_error": val, "test_error": test, "wall_time_s": wall,
                                                      "seed": seed})
            job += 1
    return sweep


def seed_groups_of(sweep: Path) -> list:
    from nin_cli.sweep import read_sweep

    return read_sweep(sweep)[1]


def seed_rows(sweep: Path) -> dict[str, dict]:
    with open(sweep / "summary_seeds.csv", newline="") as f:
        return {r["overrides"]: r for r in csv.DictReader(f)}


def test_summary_groups_jobs_that_differ_only_in_the_seed(seeded_sweep):
    from nin_cli.sweep import write_summary

    rows = write_summary(seeded_sweep)
    assert [r.seed for r in rows] == ["0", "1", "2"] * 2 and rows[5].status == "failed"
    groups = seed_groups_of(seeded_sweep)
    assert [(g.label, g.jobs, g.seeds, len(g.done)) for g in groups] == [
        ("model.dropout=0", "0 1 2", "0 1 2", 3), ("model.dropout=0.5", "3 4 5", "0 1 2", 2)]
    mean, std, n = groups[0].stats("test_error")
    assert (mean, std, n) == (pytest.approx(10.5), pytest.approx(0.2), 3)
    assert groups[0].stats("wall_time_s") == (pytest.approx(110.0), pytest.approx(10.0), 3)
    assert groups[1].stats("test_error") == (pytest.approx(12.5), pytest.approx(0.70710678), 2)
    assert groups[1].stats("best_val_error") == (pytest.approx(11.0), None, 1)  # one seed: no std

    csv_rows = seed_rows(seeded_sweep)
    assert list(csv_rows) == ["model.dropout=0", "model.dropout=0.5"]
    zero, half = csv_rows["model.dropout=0"], csv_rows["model.dropout=0.5"]
    assert (zero["n_jobs"], zero["n_done"], zero["seeds"], zero["jobs"]) == ("3", "3", "0 1 2", "0 1 2")
    assert float(zero["best_val_error_mean"]) == pytest.approx(9.5)
    assert float(zero["best_val_error_std"]) == pytest.approx(0.2) and zero["best_val_error_n"] == "3"
    assert float(zero["params_mean"]) == 1000 and float(zero["params_std"]) == 0
    assert (half["n_done"], half["best_val_error_std"], half["best_val_error_n"]) == ("2", "", "1")
    assert "seed_mean" not in zero and "stopped_early_mean" not in zero  # the seed and flags are not metrics

    markdown = (seeded_sweep / "summary.md").read_text()
    assert "## Over seeds" in markdown
    assert "| model.dropout=0 | 0 1 2 | 3 | 9.50 ± 0.20 | 10.50 ± 0.20 | 110.0 ± 10.0 | 0 1 2 |" in markdown
    assert "| model.dropout=0.5 | 0 1 2 | 2 | 11.00 (n=1) | 12.50 ± 0.71 | 205.0 ± 7.1 | 3 4 5 |" in markdown
    assert "- model.dropout=0.5: 1 of 3 jobs failed; not in the statistics" in markdown
    assert "Best on validation over seeds: `model.dropout=0` (jobs 0 1 2), 9.50 ± 0.20%." in markdown


def test_summary_command_prints_the_seed_table(nin, seeded_sweep):
    result = nin("sweep", "--summary", str(seeded_sweep))
    assert result.code == 0, result.err
    assert "over seeds" in result.out and "10.50 ± 0.20" in result.out and "12.50 ± 0.71" in result.out
    assert "1 of 3 jobs failed; not in the statistics" in result.out
    assert (seeded_sweep / "summary_seeds.csv").is_file() and len(summary_rows(seeded_sweep)) == 6


def test_a_sweep_without_seeds_lists_each_job_alone(tmp_path):
    from nin_cli.sweep import write_summary

    sweep = tmp_path / "sweep"
    for job, head in enumerate(("gap", "fc")):
        fake_job(sweep, str(job), [f"head={head}", "trainer.seed=3"], {"best_val_error": 5.0 + job,
                                                                        "test_error": 6.0 + job, "seed": 3})
    write_summary(sweep)
    rows = seed_rows(sweep)
    assert list(rows) == ["head=gap", "head=fc"]
    assert rows["head=fc"]["test_error_mean"] == "7.0" and rows["head=fc"]["test_error_std"] == ""
    assert "## Over seeds" not in (sweep / "summary.md").read_text()  # nothing aggregated: no second table


def test_only_the_seed_swept_is_one_group(tmp_path):
    from nin_cli.sweep import write_summary

    sweep = tmp_path / "sweep"
    for seed, error in enumerate((20.0, 22.0, 27.0)):
        fake_job(sweep, str(seed), ["dataset=synthetic", f"+trainer.seed={seed}"], {"test_error": error})
    write_summary(sweep)
    (group,) = seed_groups_of(sweep)
    assert group.label == "all jobs" and group.seeds == "0 1 2"
    assert group.stats("test_error") == (pytest.approx(23.0), pytest.approx(3.60555128), 3)


def test_seed_statistics_are_the_paper_tables():
    from nin_cli.report import Line, Row, RunRecord
    from nin_cli.sweep import group_by_seed, mean_std

    values = [10.3, 10.5, 10.9]
    line = Line(Row("x", "T", "x", 10.0, "cifar10"), runs=[RunRecord(Path("."), "x", "done", v) for v in values])
    assert mean_std(values) == (line.mean, line.std) == (pytest.approx(10.5666667), pytest.approx(0.30550505))
    assert mean_std([4.0]) == (4.0, None) and mean_std([]) == (None, None)
    configs = [{"model.dropout": 0.5, "trainer.seed": 0, "resume": None},
               {"model.dropout": 0.5, "trainer.seed": 1, "resume": "/runs/b/checkpoints/last.pt"},
               {"model.dropout": 0.0, "trainer.seed": 0, "resume": None},
               {"model.dropout": 0.5, "trainer.seed": 2, "dataset.image_shape": [3, 8, 8]}]
    assert group_by_seed(list(range(4)), lambda i: configs[i]) == [[0, 1], [2], [3]]


def test_summary_json_is_one_object_with_the_seed_statistics(nin, seeded_sweep):
    result = nin("sweep", "--summary", str(seeded_sweep), "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert len(data["jobs"]) == 6 and {job["status"] for job in data["jobs"]} >= {"done", "failed"}
    no_dropout = next(g for g in data["seed_groups"] if g["seeds"] == "0 1 2" and g["test_error"]["n"] == 3)
    assert abs(no_dropout["test_error"]["mean"] - 10.5) < 1e-9 and abs(no_dropout["test_error"]["std"] - 0.2) < 1e-9
