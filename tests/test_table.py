"""`nin table` on fabricated run directories: the paper's rows, means ± std over seeds, differences, verdicts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nin_cli.report import Line, Row, RunRecord, tolerance, verdict

OFFICIAL = "CIFAR-10 (official files)"


def fake_run(root: Path, row: str, seed: int, error: float | None, budget: str = "full", data: str = OFFICIAL,
             status: str = "done", message: str = "", comparable: bool = True, why_not: str = "") -> Path:
    """A run directory as the table runner leaves it: reproduce.json, then summary.json or outcome.json."""
    run = root / budget / row / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "reproduce.json").write_text(json.dumps({
        "row": row, "budget": budget, "data": data, "comparable": comparable, "why_not": why_not, "seed": seed,
        "command": f"nin train experiment={row} dataset.train_on=train+val trainer.seed={seed}"}))
    if status == "done":
        (run / "summary.json").write_text(json.dumps({
            "experiment": row, "test_error": error, "epochs": 260 if budget == "full" else 1, "wall_time_s": 3600.0,
            "device": "cuda" if budget == "full" else "cpu", "seed": seed}))
    else:
        (run / "outcome.json").write_text(json.dumps({"status": status, "message": message}))
    return run


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed, error in enumerate((10.3, 10.5, 10.7)):
        fake_run(root, "paper_cifar10", seed, error)
    for seed, error in enumerate((13.0, 13.2)):
        fake_run(root, "gap_vs_fc/fc", seed, error)
    fake_run(root, "paper_mnist", 0, 0.40)
    c100 = "CIFAR-100 (official files)"
    fake_run(root, "paper_cifar100_same", 0, None, data=c100, status="collapsed",
             message="training collapsed to chance: loss 4.6052 ≈ ln 100")
    fake_run(root, "paper_cifar100_same", 1, 36.0, data=c100)
    fake_run(root, "paper_cifar100_same", 2, 35.5, data=c100)
    fake_run(root, "paper_svhn", 0, None, data="SVHN (official files)", status="no_data",
             message="svhn: train_32x32.mat not found")
    fake_run(root, "cnn_gap/gap", 0, 88.0, budget="smoke", data="synthetic stand-in (CIFAR-10 shape)",
             comparable=False, why_not="smoke budget, synthetic data")
    custom = root / "by_hand"  # a run made with `nin train experiment=...`, no reproduce.json
    custom.mkdir()
    (custom / "config.yaml").write_text("experiment: paper_cifar10_aug\ndataset:\n  name: cifar10\n"
                                        "  train_on: train+val\ntrainer:\n  seed: 4\n  max_steps_per_epoch: null\n")
    (custom / "summary.json").write_text(json.dumps({"experiment": "paper_cifar10_aug", "test_error": 8.9,
                                                     "epochs": 260, "wall_time_s": 7200.0, "device": "cuda"}))
    other = root / "demo"  # not a paper row: ignored
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"experiment": "demo_digits", "test_error": 3.0}))
    return root


def read_csv(path: Path) -> dict[str, dict]:
    return {r["row"]: r for r in csv.DictReader(path.open())}


def test_table_renders_rows_means_and_verdicts(nin, runs, tmp_path):
    out = tmp_path / "results"
    result = nin("table", str(runs), "--out", str(out))
    assert result.code == 0, result.err
    rows = read_csv(out / "table.csv")
    assert list(rows)[:3] == ["paper_cifar10", "paper_cifar10_aug", "paper_cifar10_nodropout"] and len(rows) == 14
    p10 = rows["paper_cifar10"]
    assert (p10["ours_mean"], p10["ours_std"], p10["difference"]) == ("10.5000", "0.2000", "0.0900")
    assert (p10["seeds"], p10["seed_slots"], p10["comparable"]) == ("3", "0 1 2", "yes")  # a count, then the slots
    assert p10["verdict"] == "reproduced: within ±0.52 [3 seeds (0, 1, 2)]"
    assert p10["device"] == "cuda" and p10["data"] == OFFICIAL
    assert rows["gap_vs_fc/gap"]["ours_mean"] == "10.5000"  # the same recipe: it reads paper_cifar10's runs
    fc = rows["gap_vs_fc/fc"]
    assert (fc["ours_mean"], fc["difference"]) == ("13.1000", "1.5100")
    assert fc["verdict"] == "not reproduced: worse by 1.51 (tolerance ±0.58) [2 seeds (0, 1)]"
    mnist = rows["paper_mnist"]
    assert mnist["verdict"] == "reproduced: within ±0.15 [1 seed (0)]" and mnist["ours_std"] == ""
    same = rows["paper_cifar100_same"]
    assert (same["ours_mean"], same["seeds"], same["seed_slots"]) == ("35.7500", "2", "1 2")
    assert same["verdict"].startswith("reproduced: within ±1.78 [3 seeds (0, 1, 2); 1 of 3 seeds collapsed to "
                                      "chance (seed 0: training collapsed to chance: loss 4.6052")
    svhn = rows["paper_svhn"]
    assert svhn["verdict"] == "1 seed (0); 1 of 1 seeds no data (seed 0: svhn: train_32x32.mat not found)"
    assert svhn["seeds"] == "0" and svhn["seed_slots"] == ""  # tried, none in a mean
    assert rows["cnn_gap/gap"]["verdict"] == ("not comparable (synthetic stand-in data; smoke budget: a shortened "
                                              "schedule, not the paper's) [1 seed (0)]")
    assert rows["cnn_gap/gap"]["comparable"] == "no"
    aug = rows["paper_cifar10_aug"]
    assert (aug["budget"], aug["data"], aug["verdict"]) == ("custom", "CIFAR-10", "reproduced: within ±0.44 "
                                                                                  "[1 seed (4)]")
    assert rows["paper_cifar10_nodropout"]["verdict"] == "not run"
    assert rows["imagenet_nin"]["verdict"].startswith("recipe only")
    assert rows["paper_cifar10"]["wall_time_s"] == "10800.0" and rows["paper_cifar10"]["epochs"] == "260"

    md = (out / "table.md").read_text()
    assert "### Table 1 · CIFAR-10 (test error %)" in md and "| Stochastic Pooling *(paper)* | 15.13 |" in md
    assert "| NIN + Dropout (`paper_cifar10`) | 10.41 | 10.50 ± 0.20 | +0.09 | 3 | 260 | 3.0 h | cuda |" in md
    assert "`paper_cifar10` (seeds 0, 1, 2): `nin train experiment=paper_cifar10" in md
    for text in ("Table 1 · CIFAR-10", "10.50 ± 0.20", "✓ within ±0.52", "✗ outside ±0.58", "not comparable",
                 "no data", "Model zoo · ImageNet"):
        assert text in result.out, text


def test_budget_filter_and_shares(nin, runs, tmp_path):
    result = nin("table", str(runs), "--budget", "smoke", "--out", str(tmp_path / "r"))
    assert result.code == 0, result.err
    rows = read_csv(tmp_path / "r" / "table.csv")
    assert [k for k, r in rows.items() if r["ours_mean"]] == ["cnn_gap/gap"]


@pytest.mark.parametrize("args, code, needle", [
    (["/no/such/run"], 3, "/no/such/run: no such run directory"),
    (["--budget", "huge"], 2, "--budget huge: must be one of"),
    (["--rows", "paper_cifar10"], 2, "add --run"),
    (["--run", "--rows", "paper_cifar11"], 2, "--rows: no row paper_cifar11"),
    (["--run", "--budget", "long"], 2, "--budget long: must be one of full, short, cpu, smoke"),
    (["--run", "--budget", "smoke", "--seeds", "1"], 2, "--seeds: the smoke budget has seed slots 0"),
    (["--run", "--budget", "cpu", "--seeds", "0,2"], 2, "--seeds: the cpu budget has seed slots 0, 1"),
    (["--run", "--budget", "cpu", "--seeds", "0,x"], 2, "--seeds '0,x': give seed slots as K,..."),
    (["--seeds", "0"], 2, "add --run"),
])
def test_bad_table_invocations_exit_with_one_line(nin, tmp_path, args, code, needle):
    result = nin("table", *args, "--out", str(tmp_path / "r"))
    assert result.code == code and needle in result.err and len(result.err_lines) == 1, result.err


def test_a_corrupt_summary_is_named(nin, runs, tmp_path):
    (runs / "full" / "paper_mnist" / "seed0" / "summary.json").write_text("{not json")
    result = nin("table", str(runs), "--out", str(tmp_path / "r"))
    assert result.code == 3 and "summary.json: not valid JSON" in result.err, result.err


def test_no_runs_yet_prints_the_paper_alone(nin, tmp_path):
    result = nin("table", "--out", str(tmp_path / "r"))
    assert result.code == 0, result.err
    assert all(r["verdict"] in ("not run", "recipe only (not trained by the table)")
               for r in read_csv(tmp_path / "r" / "table.csv").values())


def test_verdict_tolerance_boundaries():
    row = Row("x", "T", "x", 10.0, "cifar10")
    assert tolerance(10.0) == 0.5 and tolerance(0.47) == 0.15

    def line(*errors: float, budget: str = "full") -> Line:
        return Line(row, budget, "d", [RunRecord(Path("."), "x", "done", e, seed=i) for i, e in enumerate(errors)])

    assert verdict(line(10.5))[0] == "reproduced: within ±0.50 [1 seed (0)]"
    assert verdict(line(10.6))[0] == "not reproduced: worse by 0.60 (tolerance ±0.50) [1 seed (0)]"
    assert verdict(line(9.0, 9.2))[0] == "not reproduced: better by 0.90 (tolerance ±0.50) [2 seeds (0, 1)]"
    assert verdict(line(10.2, budget="short"))[0] == "reproduced: within ±0.50 at the short budget [1 seed (0)]"


ABSORBING = ("training collapsed at step 903: every image has got the same output for 30 steps (dead class maps or "
             "a dead layer; loss about ln 10 = 2.3026, no gradient reaches the weights)")


def epochs_file(path: Path, seconds: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"epoch": i + 1, "epoch_time_s": s}) + "\n" for i, s in enumerate(seconds)))


def test_the_line_counts_seed_slots_names_restarts_and_sums_true_wall_time(nin, tmp_path):
    """Two cpu-budget MNIST slots: slot 0 was restarted once (its attempt kept in attempts/seed0, trained on as
    seed 1000), slot 1 ran clean. Seeds counts slots (2), not a seed number; the wall time adds the restarted
    attempt's epochs; the verdict says what happened to each slot."""
    root = tmp_path / "runs"
    mnist = "MNIST (official files)"
    slot0 = fake_run(root, "paper_mnist", 0, 0.50, budget="cpu", data=mnist)
    restart = {"seed": 0, "collapsed_at_step": 903, "reason": ABSORBING, "kept_in": "attempts/seed0"}
    summary = json.loads((slot0 / "summary.json").read_text())
    (slot0 / "summary.json").write_text(json.dumps({**summary, "seed": 1000, "wall_time_s": 3000.0,
                                                    "collapse_restarts": [restart]}))
    epochs_file(slot0 / "attempts" / "seed0" / "metrics.jsonl", [100.0, 50.0])
    fake_run(root, "paper_mnist", 1, 0.44, budget="cpu", data=mnist)
    result = nin("table", str(root), "--out", str(tmp_path / "out"), "--check")
    assert result.code == 0, result.err
    row = read_csv(tmp_path / "out" / "table.csv")["paper_mnist"]
    assert (row["seeds"], row["seed_slots"], row["ours_mean"], row["ours_std"]) == ("2", "0 1", "0.4700", "0.0424")
    assert row["wall_time_s"] == "6750.0"  # 3000 + the kept attempt's 150 + slot 1's 3600
    assert row["verdict"] == ("reproduced: within ±0.15 at the cpu budget [2 seeds (0, 1); seed 0 restarted once "
                              "(absorbing state at step 903, kept in attempts/seed0)]")
    assert "| 0.47 ± 0.04 | +0.00 | 2 | 1 | 112.5 min |" in (tmp_path / "out" / "table.md").read_text()


def test_the_line_names_the_input_scale_deviation_from_the_runs_config(nin, tmp_path):
    """A run whose resolved config scales the input (paper_mnist's remedy) has its line say so; a run at scale 1
    (or from before the key existed) says nothing."""
    root = tmp_path / "runs"
    mnist = "MNIST (official files)"
    for seed, scale in ((0, 64), (1, 64)):
        run = fake_run(root, "paper_mnist", seed, 0.45, budget="cpu", data=mnist)
        (run / "config.yaml").write_text(f"experiment: paper_mnist\ndataset:\n  input_scale: {scale}\n")
    result = nin("table", str(root), "--out", str(tmp_path / "out"))
    assert result.code == 0, result.err
    row = read_csv(tmp_path / "out" / "table.csv")["paper_mnist"]
    assert row["verdict"] == ("reproduced: within ±0.15 at the cpu budget [2 seeds (0, 1); deviation: input × 64 "
                              "(dataset.input_scale)]")
    (root / "cpu" / "paper_mnist" / "seed1" / "config.yaml").write_text("experiment: paper_mnist\n")
    (root / "cpu" / "paper_mnist" / "seed0" / "config.yaml").write_text("dataset:\n  input_scale: 1.0\n")
    nin("table", str(root), "--out", str(tmp_path / "out"))
    assert "deviation" not in read_csv(tmp_path / "out" / "table.csv")["paper_mnist"]["verdict"]


def test_a_record_from_before_reasons_and_a_lost_clock_is_read_honestly(nin, tmp_path):
    """The results/cpu record this replaced: restarts without reasons (seeds 0 and 1 before the 1000 stride),
    summary seed 2 for slot 0, and a wall_time_s of 1e-5 s from a resume that lost its clock: the line counts one
    slot, names both restarts, and takes the time from the epochs (28 × 100 s). A kept_in outside the run
    directory is not followed."""
    root = tmp_path / "runs"
    run = fake_run(root, "paper_mnist", 0, 0.46, budget="cpu", data="MNIST (official files)")
    restarts = [{"seed": 0, "collapsed_at_step": 936}, {"seed": 1, "collapsed_at_step": 567, "kept_in": "../../x"}]
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "seed": 2, "wall_time_s": 1.2e-05,
                                                  "collapse_restarts": restarts}))
    epochs_file(run / "metrics.jsonl", [100.0] * 28)
    epochs_file(tmp_path / "x" / "metrics.jsonl", [1e6])
    assert nin("table", str(root), "--out", str(tmp_path / "out")).code == 0
    row = read_csv(tmp_path / "out" / "table.csv")["paper_mnist"]
    assert (row["seeds"], row["seed_slots"], row["wall_time_s"]) == ("1", "0", "2800.0")
    assert row["verdict"].endswith("[1 seed (0); seed 0 restarted twice (seed 0: collapsed at step 936; seed 1: "
                                   "collapsed at step 567, kept in ../../x)]")


def test_a_failed_slot_is_counted_k_of_n_with_its_reason(nin, tmp_path):
    root = tmp_path / "runs"
    mnist = "MNIST (official files)"
    fake_run(root, "paper_mnist", 0, 0.45, budget="cpu", data=mnist)
    fake_run(root, "paper_mnist", 1, None, budget="cpu", data=mnist, status="collapsed",
             message=ABSORBING + " [seed 2001 was the last attempt; seeds 1, 1001 collapsed before]")
    result = nin("table", str(root), "--out", str(tmp_path / "out"), "--check")
    assert result.code == 0, result.err  # one seed finished within tolerance; the other is counted, not hidden
    row = read_csv(tmp_path / "out" / "table.csv")["paper_mnist"]
    assert (row["seeds"], row["seed_slots"], row["ours_std"]) == ("1", "0", "")
    assert row["verdict"].startswith("reproduced: within ±0.15 at the cpu budget [2 seeds (0, 1); 1 of 2 seeds "
                                     "collapsed to chance (seed 1: training collapsed at step 903")
