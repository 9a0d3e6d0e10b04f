"""`compare_runs` on fabricated run directories: differing config keys, metric deltas, provenance, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from nin_cli.compare import compare_runs, flatten, render_compare, run_labels
from nin_cli.errors import ConfigError, DataError

VERSIONS = {"nin-cli": "0.1.0", "torch": "2.14.1", "numpy": "2.4.6"}


def fake_run(root: Path, name: str, *, dropout: float = 0.5, seed: int = 0, lr: float = 0.1, test_error: float = 10.0,
             best_val_error: float | None = 9.0, wall_time_s: float = 3600.0, commit: str = "a" * 40,
             dirty: bool = False, torch: str = "2.14.1", device: str = "cuda", extra: dict | None = None) -> Path:
    """A finished run directory as `nin train` leaves it: config.yaml, summary.json, provenance.json, metrics.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    config = {"dataset": {"name": "cifar10", "image_shape": [3, 32, 32]},
              "model": {"name": "nin_cifar10", "dropout": dropout, "init_std_overrides": {}},
              "optim": {"lr": lr}, "trainer": {"seed": seed, "max_steps_per_epoch": None},
              "experiment": "paper_cifar10", "resume": None, **(extra or {})}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "summary.json").write_text(json.dumps({
        "experiment": "paper_cifar10", "epochs": 260, "params": 966986, "test_error": test_error,
        "best_val_error": best_val_error, "wall_time_s": wall_time_s, "device": device, "seed": seed,
        "stopped_early": False}))
    (run / "provenance.json").write_text(json.dumps({
        "git_commit": commit, "git_dirty": dirty, "versions": {**VERSIONS, "torch": torch}, "python": "3.11.7",
        "device": device, "host": name, "start_time": f"2026-12-0{seed + 1}T10:00:00", "command": ["nin", "train"]}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "lr": lr, "train_loss": 2.0, "val_error": 80.0,
                                                   "epoch_time_s": 60.0}) + "\n")
    return run


def test_only_differing_config_keys_metric_deltas_and_provenance(tmp_path):
    a = fake_run(tmp_path, "a", test_error=10.5, wall_time_s=3600.0)
    b = fake_run(tmp_path, "b", dropout=0.25, seed=1, test_error=10.25, best_val_error=None, wall_time_s=3000.0,
                 commit="b" * 40, dirty=True, torch="2.15.0")
    c = fake_run(tmp_path, "c", lr=0.05, test_error=11.0, extra={"head": {"type": "fc"}})
    result = compare_runs([a, b, c])

    assert result["runs"] == [str(a), str(b), str(c)] and result["labels"] == ["a", "b", "c"]
    assert result["config"] == {"model.dropout": [0.5, 0.25, 0.5], "optim.lr": [0.1, 0.1, 0.05],
                                "trainer.seed": [0, 1, 0], "head.type": [None, None, "fc"]}  # absent counts as null
    metrics = result["metrics"]
    assert list(metrics)[:3] == ["best_val_error", "test_error", "wall_time_s"]  # the sweep summary's order
    assert "seed" not in metrics and "stopped_early" not in metrics and "device" not in metrics
    assert metrics["test_error"]["values"] == [10.5, 10.25, 11.0]
    assert metrics["test_error"]["deltas"] == [0.0, -0.25, 0.5]
    assert metrics["wall_time_s"]["deltas"] == [0.0, -600.0, 0.0]
    assert metrics["best_val_error"] == {"values": [9.0, None, 9.0], "deltas": [0.0, None, 0.0]}
    assert metrics["params"]["deltas"] == [0, 0, 0]
    assert result["provenance"] == {"git_commit": ["a" * 40, "b" * 40, "a" * 40], "git_dirty": [False, True, False],
                                    "versions.torch": ["2.14.1", "2.15.0", "2.14.1"]}  # host, time: not compared
    assert json.loads(json.dumps(result)) == result  # the --json form is the dict itself


def test_identical_runs_differ_in_nothing_and_render(tmp_path):
    a, b = fake_run(tmp_path / "x", "seed0"), fake_run(tmp_path / "y", "seed0", test_error=10.2)
    result = compare_runs([a, b])
    assert result["config"] == {} and result["provenance"] == {}
    assert result["labels"] == ["x/seed0", "y/seed0"]  # the shortest suffixes that tell them apart
    console = Console(record=True, width=200)
    render_compare(result, console)
    text = console.export_text()
    assert "config: identical" in text and "provenance: same commit" in text
    assert "10.2 (+0.2)" in text and "966,986" in text and "y/seed0 (Δ)" in text


def test_render_shows_differing_keys_and_signed_deltas(tmp_path):
    a = fake_run(tmp_path, "a", test_error=10.5)
    b = fake_run(tmp_path, "b", dropout=0.25, test_error=10.25, torch="2.15.0")
    console = Console(record=True, width=200)
    render_compare(compare_runs([a, b]), console)
    text = console.export_text()
    assert "config: 1 key(s) differ" in text and "model.dropout" in text and "0.25" in text
    assert "10.25 (−0.25)" in text and "versions.torch" in text and "2.15.0" in text


def test_flatten_and_labels():
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None}) == {"a.b": 1, "a.c": [1, 2], "a.d": {},
                                                                          "e": None}
    assert run_labels([Path("/r/full/seed0"), Path("/r/short/seed0"), Path("/r/full/seed1")]) == [
        "full/seed0", "short/seed0", "full/seed1"]
    assert run_labels([Path("/r/a"), Path("/r/a")]) == ["1:a", "2:a"]


@pytest.mark.parametrize("name, content, needle", [
    ("summary.json", None, "summary.json: missing (written when a run finishes: is it finished?)"),
    ("provenance.json", None, "provenance.json: missing"),
    ("config.yaml", None, "config.yaml: missing"),
    ("summary.json", "{not json", "summary.json: not valid JSON"),
    ("summary.json", "[1, 2]", "summary.json: holds a list, not a dict"),
    ("summary.json", "[" * 100 + "]" * 100, "summary.json: nested deeper than 32 levels"),
    ("summary.json", "[" * 200000 + "]" * 200000, "summary.json: not valid JSON"),  # RecursionError inside json
    ("summary.json", '{"a":' * 50 + "1" + "}" * 50, "summary.json: nested deeper than 32 levels"),
    ("config.yaml", "model: [unclosed", "config.yaml: not valid YAML"),
    ("config.yaml", "- just\n- a list\n", "config.yaml: holds a list, not a dict"),
    ("provenance.json", b"\xff\xfe\x00garbage", "provenance.json: not UTF-8 text"),
])
def test_missing_or_unreadable_files_are_named(tmp_path, name, content, needle):
    a, b = fake_run(tmp_path, "a"), fake_run(tmp_path, "b")
    target = b / name
    if content is None:
        target.unlink()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    with pytest.raises(DataError) as err:
        compare_runs([a, b])
    assert err.value.exit_code == 3 and needle in str(err.value) and str(target) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_hostile_config_is_data_never_code(tmp_path):
    a, b = fake_run(tmp_path, "a"), fake_run(tmp_path, "b")
    canary = tmp_path / "canary"
    (b / "config.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {canary}']\n")
    with pytest.raises(DataError) as err:
        compare_runs([a, b])
    assert err.value.exit_code == 3 and "config.yaml: not valid YAML" in str(err.value)
    assert not canary.exists()


def test_bad_arguments(tmp_path):
    a = fake_run(tmp_path, "a")
    with pytest.raises(ConfigError) as err:
        compare_runs([a])
    assert err.value.exit_code == 2 and "two or more run directories (got 1)" in str(err.value)
    with pytest.raises(DataError) as missing:
        compare_runs([a, tmp_path / "nope"])
    assert missing.value.exit_code == 3 and str(missing.value) == f"{tmp_path / 'nope'}: no such run directory"
