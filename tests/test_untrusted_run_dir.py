"""A run directory is untrusted input: resuming one someone shared must never run code from it.

`nin train resume=RUN`, `resume=RUN/checkpoints/last.pt` and `hydra.run.dir=RUN` replay RUN/.hydra/overrides.yaml.
Each hostile override below is refused with exit 4 naming the file and the key, before anything is composed,
instantiated or created; a canary file proves the payload never ran.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FAST
from nin_cli.checkpoint import load_checkpoint


def callback(target: str, **kwargs: str) -> str:
    args = ",".join(f"{k}:{v}" for k, v in kwargs.items())
    return f"+hydra.callbacks.evil={{_target_:{target}{',' + args if args else ''}}}"


def hostile_overrides(canary: Path, payload: Path) -> dict[str, str]:
    """Several kinds of code and file access Hydra would instantiate, each writing or importing the canary."""
    return {
        "import-a-file": callback("runpy.run_path", path_name=f"'{payload}'"),
        "open-for-writing": callback("builtins.open", file=f"'{canary}'", mode="w"),
        "pathlib-touch": callback("pathlib.Path.touch", self=f"'{canary}'"),
        "os-system": callback("os.system", command=f"'touch {canary}'"),
        "callback-key-path": "+hydra.callbacks.evil._target_=runpy.run_path",
        "hydra-launcher-group": "hydra/launcher=joblib",
        "hydra-run-dir": f"hydra.run.dir={canary.parent / 'elsewhere'}",
        "target-in-schema-dict": f"+model.init_std_overrides={{_target_:runpy.run_path,path_name:'{payload}'}}",
        "unknown-key": "+evil.payload=1",
        "group-path-traversal": "model=../../../../tmp/evil",
    }


@pytest.fixture
def shared_run(tiny_run, tmp_path) -> Path:
    """A legitimate finished run, copied as if someone had shared it."""
    run = tmp_path / "shared"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    return run


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CASES = list(hostile_overrides(Path("/c"), Path("/p")))
HOW = {"resume-dir": lambda run: [f"resume={run}"],
       "resume-ckpt": lambda run: [f"resume={run / 'checkpoints' / 'last.pt'}"],
       "run-dir": lambda run: [f"hydra.run.dir={run}"]}


@pytest.mark.parametrize("how", list(HOW))
@pytest.mark.parametrize("case", CASES)
def test_a_hostile_replayed_override_is_refused_and_never_runs(nin, shared_run, tmp_path, case, how):
    canary, payload = tmp_path / "canary", tmp_path / "payload.py"
    payload.write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    item = hostile_overrides(canary, payload)[case]
    overrides = shared_run / ".hydra" / "overrides.yaml"
    overrides.write_text(yaml.safe_dump([*yaml.safe_load(overrides.read_text()), item]))
    before, cwd_before = snapshot(shared_run), sorted(p.name for p in tmp_path.iterdir())
    result = nin("train", *HOW[how](shared_run))
    assert result.code == 4, result.err
    assert len(result.err_lines) == 1 and "Traceback" not in result.err
    assert str(overrides) in result.err and "refused override" in result.err
    assert not canary.exists()
    assert snapshot(shared_run) == before  # nothing written into the shared run
    assert sorted(p.name for p in tmp_path.iterdir()) == cwd_before  # no new run directory (no outputs/)


@pytest.mark.parametrize("content", ["trainer.epochs: [1\n", "{a: 1}\n", "- 'trainer.epochs=[1'\n", "- 3\n"],
                         ids=["bad-yaml", "not-a-list", "bad-override", "not-a-string"])
def test_a_broken_overrides_file_is_named_and_exits_3(nin, shared_run, content):
    overrides = shared_run / ".hydra" / "overrides.yaml"
    overrides.write_text(content)
    before = snapshot(shared_run)
    result = nin("train", f"hydra.run.dir={shared_run}")
    assert result.code == 3, result.err
    assert len(result.err_lines) == 1 and str(overrides) in result.err
    assert snapshot(shared_run) == before


def test_the_run_s_own_overrides_still_replay(nin, shared_run):
    """The legitimate path: a finished run's overrides pass the check and the run is recognised as finished."""
    from nin_cli.runs import resume_overrides

    replayed = resume_overrides([f"hydra.run.dir={shared_run}"])
    assert [o.lstrip("+") for o in replayed if not o.startswith("hydra.run.dir")][:len(FAST)] == FAST
    last = shared_run / "checkpoints" / "last.pt"
    metrics, weights = (shared_run / "metrics.jsonl").read_bytes(), load_checkpoint(last)
    summary = json.loads((shared_run / "summary.json").read_text())
    threads = torch.get_num_threads()
    result = nin("train", f"hydra.run.dir={shared_run}")
    torch.set_num_threads(threads)  # the run's trainer.num_threads=1 is process-wide
    assert result.code == 0, result.err
    assert f"resuming from {last} at epoch 3, step 10" in result.err  # finished: no step trained again
    assert (shared_run / "metrics.jsonl").read_bytes() == metrics
    again = load_checkpoint(last)
    assert again["state"]["step"] == 10 and all(torch.equal(again["model"][k], v) for k, v in weights["model"].items())
    assert json.loads((shared_run / "summary.json").read_text())["test_error"] == summary["test_error"]


def test_a_run_that_diverges_before_any_save_does_not_promise_a_checkpoint(nin, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_FAULT_INJECT", "loss@2=nan")
    result = nin("train", *FAST, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.code == 5 and len(result.err_lines) == 1, result.err
    assert "no checkpoint had been saved yet" in result.err and "kept" not in result.err


def test_a_signal_after_the_last_step_names_the_finished_epoch_not_the_next(nin, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_FAULT_INJECT", "after_step@10=int")  # FAST: 5 steps per epoch, 2 epochs
    result = nin("train", *FAST, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.code == 130, result.err
    assert "stopped at epoch 2 (finished), step 10" in result.err_lines[-1] and "epoch 3" not in result.err
