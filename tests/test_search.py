"""`nin sweep --trials N`: current Optuna driven directly, pruning on the validation error, resumable studies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_sweep import TINY, assert_rows_match_runs, summary_rows

optuna = pytest.importorskip("optuna")  # the sweep extra: `make` installs it, so make test runs these

from nin_cli import search  # noqa: E402


def trial_files(sweep: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of every trial directory: (size, modification time, lines), by path under the sweep."""
    found = {}
    for path in sorted(sweep.glob("[0-9]*/**/*")):
        if path.is_file():
            info = path.stat()
            lines = path.read_bytes().count(b"\n") if path.suffix in (".jsonl", ".log") else 0
            found[path.relative_to(sweep).as_posix()] = (info.st_size, info.st_mtime_ns, lines)
    return found


def test_search_minimises_validation_error_and_continues_the_study(nin, tmp_path):
    import yaml

    sweep = tmp_path / "sweep"
    args = ["sweep", "--trials", "3", "--seed", "0", *TINY, "model.dropout=interval(0,0.5)",
            "optim.lr=tag(log,interval(0.01,0.1))", "head=choice(gap,fc)", f"hydra.sweep.dir={sweep}"]
    first = nin(*args)
    assert first.code == 0, first.err
    rows = assert_rows_match_runs(sweep, 3)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(float(r["best_val_error"]) for r in rows)
    assert 0 <= best["best_params"]["model.dropout"] <= 0.5 and 0.01 <= best["best_params"]["optim.lr"] <= 0.1
    assert best["best_params"]["head"] in ("gap", "fc")
    for row in rows:  # each trial trained exactly the values Optuna asked for
        overrides = dict(o.partition("=")[::2] for o in row["overrides"].split())
        assert overrides["head"] in ("gap", "fc") and 0.01 <= float(overrides["optim.lr"]) <= 0.1
    assert (sweep / search.STUDY).is_file()

    trained = trial_files(sweep)
    assert sorted({name.split("/")[0] for name in trained}) == ["0", "1", "2"]
    again = nin(*args)  # the study has its 3 trials: nothing runs, the summary is the same
    assert again.code == 0, again.err
    assert len(summary_rows(sweep)) == 3
    assert trial_files(sweep) == trained  # no trial re-ran: every file of every trial as it was, no new trial
    more = nin(*[a if a != "3" else "5" for a in args])  # the same study, continued to 5 trials
    assert more.code == 0, more.err
    assert_rows_match_runs(sweep, 5)
    continued = trial_files(sweep)
    assert {k: v for k, v in continued.items() if k.split("/")[0] in ("0", "1", "2")} == trained  # only 3, 4 ran
    assert sorted({name.split("/")[0] for name in continued}) == ["0", "1", "2", "3", "4"]
    study = optuna.load_study(study_name="nin", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / search.STUDY))))
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_trial_behind_is_pruned_and_marked(tmp_path):
    """A pruner that stops every trial at its first report: the training process is stopped by SIGTERM after
    epoch 1 of 1,000 and saves; the trial is PRUNED in the study and `pruned` in the summary."""
    from nin_cli.sweep import write_summary

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = search.open_study(sweep, 0, optuna.pruners.ThresholdPruner(upper=-1.0))  # any error is above -1 %
    trial = study.ask({"model.dropout": optuna.distributions.FloatDistribution(0, 0.5)})
    overrides = search.trial_overrides([o for o in TINY if not o.startswith("trainer.epochs")] +
                                       ["trainer.epochs=1000"], trial.params)
    state = search.run_trial(study, trial, overrides, sweep / "0")
    assert state == "pruned"
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    pruned = json.loads((sweep / "0" / "outcome.json").read_text())
    assert pruned["status"] == "pruned" and pruned["epoch"] == 1 and 0 <= pruned["best_val_error"] <= 100
    epochs = (sweep / "0" / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(epochs) < 1000 and (sweep / "0" / "checkpoints" / "last.pt").is_file()
    (row,) = write_summary(sweep)
    assert row.status == "pruned" and row.reason == "pruned after epoch 1"


def test_an_interrupted_trial_is_asked_again_with_its_values_and_directory(tmp_path):
    study = search.open_study(tmp_path, 0, optuna.pruners.NopPruner())
    space = {"model.dropout": optuna.distributions.FloatDistribution(0, 0.5)}
    done = study.ask(space)
    study.tell(done, 12.5)
    stopped = study.ask(space)  # left running, as by Ctrl-C or a crash
    stopped.set_user_attr("run_dir", "/etc")  # a hostile journal's attribute: never a directory
    assert search.finished_trials(study) == 1

    reopened = search.open_study(tmp_path, 0, optuna.pruners.NopPruner())
    search.continue_interrupted(reopened)
    again = reopened.ask(space)
    assert again.params == stopped.params and search.origin_number(again) == 1  # trains in <sweep>/1 again
    reopened.tell(again, 10.0)
    assert search.finished_trials(reopened) == 2  # the failed original is not counted


def test_a_continued_study_explores_new_values(tmp_path):
    space = {"model.dropout": optuna.distributions.FloatDistribution(0, 0.5)}
    first = search.open_study(tmp_path, 0, optuna.pruners.NopPruner())
    values = []
    for _ in range(2):
        trial = first.ask(space)
        values.append(trial.params["model.dropout"])
        first.tell(trial, 1.0)
    again = search.open_study(tmp_path, 0, optuna.pruners.NopPruner())  # the same command run again
    trial = again.ask(space)
    assert trial.params["model.dropout"] not in values  # re-seeded from (seed, trials so far), not from seed alone


def test_a_cut_journal_line_is_repaired_and_a_tampered_journal_exits_3(tmp_path):
    study = search.open_study(tmp_path, 0, optuna.pruners.NopPruner())
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 1.0)
    journal = tmp_path / search.STUDY
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 4, "worker_id"')  # a driver killed mid-append
    reopened = search.open_study(tmp_path, 0, optuna.pruners.NopPruner())
    repaired = journal.read_bytes()
    assert repaired.startswith(whole) and all(json.loads(line) for line in repaired.splitlines())  # the cut line went
    assert len(reopened.get_trials()) == 1
    reopened.tell(reopened.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 2.0)
    assert len(search.open_study(tmp_path, 0, optuna.pruners.NopPruner()).get_trials()) == 2  # still readable
    journal.write_bytes(b'{"op_code": 99}\n[1, 2]\n')
    with pytest.raises(search.DataError, match="study.journal: not a study Optuna can read"):
        search.open_study(tmp_path, 0, optuna.pruners.NopPruner())


def test_search_space_from_hydra_grammar():
    space, fixed = search.search_space(["optim.lr=tag(log,interval(0.001,0.1))", "model.micro_depth=range(1,4)",
                                        "trainer.epochs=3", "hydra.sweep.dir=/x", "+sweep=dropout",
                                        "model.dropout=0,0.5", "trainer.batch_size=int(interval(16,64))"])
    assert fixed == ["trainer.epochs=3"]
    assert space["optim.lr"].log and (space["optim.lr"].low, space["optim.lr"].high) == (0.001, 0.1)
    assert space["model.micro_depth"].choices == ("1", "2", "3")
    assert space["model.dropout"].choices == ("0", "0.5")
    assert isinstance(space["trainer.batch_size"], optuna.distributions.IntDistribution)
    assert search.trial_overrides(fixed, {"optim.lr": 0.1 / 3, "head": "fc"}) == [
        "trainer.epochs=3", f"optim.lr={0.1 / 3!r}", "head=fc"]


@pytest.mark.parametrize("args, message", [
    (["hydra/sweeper=optuna", "model.dropout=interval(0,0.5)"], "replaced by `nin sweep --trials N`"),
    (["--trials", "2", "trainer.epochs=1"], "--trials needs a swept key"),
    (["--trials", "2", "model.dropout=interval(0,0.5)", "dataset.val_size=0"], "set dataset.val_size > 0"),
    (["--trials", "2", "--pruner", "hyperband", "model.dropout=interval(0,0.5)"], "choose median or none"),
    (["--trials", "2", "model.nope=interval(0,0.5)"], "model.nope"),
])
def test_search_refusals(nin, tmp_path, args, message):
    result = nin("sweep", *TINY, *args, f"hydra.sweep.dir={tmp_path / 's'}")
    assert result.code == 2, result.err
    assert message in result.err_lines[-1]
    assert not (tmp_path / "s" / search.STUDY).exists()


def test_dry_run_lists_the_candidates_and_trains_nothing(nin, tmp_path):
    result = nin("sweep", "--trials", "4", "--dry-run", *TINY, "model.dropout=interval(0,0.5)",
                 f"hydra.sweep.dir={tmp_path / 's'}")
    assert result.code == 0, result.err
    assert "sweeper optuna" in result.out and "model.dropout=0.5" in result.out
    assert not (tmp_path / "s").exists()

