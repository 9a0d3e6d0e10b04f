"""Shared test helpers: run the real CLI in-process (fast) or as a subprocess (for import-order checks)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def nin(capsys, monkeypatch, tmp_path):
    """Call `nin ARGS...` in-process through the same `main()` the console script uses; cwd is tmp_path."""
    from nin_cli.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["nin", *map(str, args)])
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:  # a process runs one command: drop the logging a run configured (captured stderr, train.log)
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> Result:
    proc = subprocess.run([sys.executable, "-m", "nin_cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _forked_main(args: list[str], cwd: str, env: dict, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(cwd)
    os.environ.pop("NIN_FAULT_INJECT", None)
    os.environ.update(env)
    sys.argv = ["nin", *args]
    from nin_cli.cli import main

    main()


def run_forked(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> Result:
    """`nin ARGS...` in a real process that can be killed, forked from a server that imported torch and nin once
    (multiprocessing's forkserver): a fraction of a second per run instead of seconds of imports. `code` is -9
    after SIGKILL; stdout and stderr come back together in `err`."""
    import multiprocessing
    import uuid

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([  # what `nin train` imports, lazily or not (a missing one is skipped)
        "torch", "torch._dynamo", "torch.optim", "torch.utils.tensorboard", "PIL.Image", "pydantic", "hydra",
        "hydra._internal.hydra", "hydra._internal.config_loader_impl", "hydra.core.override_parser.overrides_parser",
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher", "optuna",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher", "nin_cli.cli", "nin_cli.train",
        "tensorboard.backend.event_processing.event_file_loader", "forkserver_preload"])
    log = Path(cwd) / f".child-{uuid.uuid4().hex}.log"
    proc = ctx.Process(target=_forked_main, args=([str(a) for a in args], str(cwd), env or {}, str(log)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise TimeoutError(f"nin {' '.join(map(str, args))} ran past {timeout}s")
    text = log.read_text()
    log.unlink()
    return Result(proc.exitcode, "", text)


# Small, fast settings for end-to-end runs on synthetic data.
FAST = ["dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,16,16]", "dataset.size=128",
        "dataset.val_size=16", "trainer.batch_size=16", "trainer.progress=plain", "trainer.epochs=1"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run (FAST, 2 epochs) shared by the eval / export / cam / checkpoint tests (they write only
    under its eval/). One thread: on a shared 2-core machine, OpenMP's spinning second thread costs 2-3× the time."""
    import torch

    from nin_cli.cli import main

    run = tmp_path_factory.mktemp("tiny") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run.parent)
        patch.setattr(sys, "argv", ["nin", "train", *FAST, "trainer.epochs=2", "trainer.num_threads=1",
                                    f"hydra.run.dir={run}"])
        with pytest.raises(SystemExit) as exit_:
            main()
    torch.set_num_threads(threads)  # trainer.num_threads is process-wide: give the other tests theirs back
    assert exit_.value.code == 0, (run / "train.log").read_text()[-2000:]
    return run


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny models (use with pytest.mark.usefixtures); restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def signal_at_step(monkeypatch, step: int, signum: int) -> None:
    """Send this process `signum` right after training step `step` (a real signal, mid-epoch)."""
    import nin_cli.train as train

    real_step = train.train_step

    def wrapped(loop, *args):
        out = real_step(loop, *args)
        if loop.state.step == step:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(train, "train_step", wrapped)
