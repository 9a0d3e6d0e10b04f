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
    assert (p10["ours_mean"], p10["ours_std"], p10["difference"], p10["seeds"]) == ("10.5000", "0.2000", "0.0900",
                                                                                     "0 1 2")
    assert p10["verdict"] == "reproduced: within ±0.52" and p10["device"] == "cuda" and p10["data"] == OFFICIAL
    assert rows["gap_vs_fc/gap"]["ours_mean"] == "10.5000"  # the same recipe: it reads paper_cifar10's runs
    fc = rows["gap_vs_fc/fc"]
    assert (fc["ours_mean"], fc["difference"]) == ("13.1000", "1.5100")
    assert fc["verdict"] == "not reproduced: worse by 1.51 (tolerance ±0.58)"
    assert rows["paper_mnist"]["verdict"] == "reproduced: within ±0.15" and rows["paper_mnist"]["ours_std"] == ""
    same = rows["paper_cifar100_same"]
    assert same["ours_mean"] == "35.7500" and same["seeds"] == "1 2"
    assert same["verdict"].startswith("reproduced: within ±1.78 [1 of 3 runs collapsed to chance: training")
    assert rows["paper_svhn"]["verdict"] == "1 of 1 runs no data: svhn: train_32x32.mat not found"
    assert rows["cnn_gap/gap"]["verdict"] == "not comparable (smoke budget, synthetic data)"
    aug = rows["paper_cifar10_aug"]
    assert (aug["budget"], aug["data"], aug["verdict"]) == ("custom", "CIFAR-10", "reproduced: within ±0.44")
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
])
def test_bad_table_invocations_exit_with_one_line(nin, tmp_path, args, code, needle):
    result = nin("table", *args, "--out", str(tmp_path / "r"))
    assert result.code == code and needle in result.err and len(result.err_lines) == 1, result.err


def test_a_corrupt_summary_is_named(nin, runs, tmp_path):
    (runs / "full" / "paper_mnist" / "seed0" / "summary.json").write_text("{not json")
    result = nin("table", str(runs), "--out", str(tmp_path / "r"))
    assert result.code == 3 and "summary.json: not a readable JSON file" in result.err, result.err


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

    assert verdict(line(10.5))[0] == "reproduced: within ±0.50"
    assert verdict(line(10.6))[0] == "not reproduced: worse by 0.60 (tolerance ±0.50)"
    assert verdict(line(9.0))[0] == "not reproduced: better by 1.00 (tolerance ±0.50)"
    assert verdict(line(10.2, budget="short"))[0] == "reproduced: within ±0.50 at the short budget"
