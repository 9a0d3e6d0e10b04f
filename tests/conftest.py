"""Shared test helpers: run the real CLI in-process (fast) or as a subprocess (for import-order checks)."""

from __future__ import annotations

import json
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
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> Result:
    proc = subprocess.run([sys.executable, "-m", "nin_cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr)


# Small, fast settings for end-to-end runs on synthetic data.
FAST = ["dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,16,16]", "dataset.size=128",
        "dataset.val_size=16", "trainer.batch_size=16", "trainer.progress=plain", "trainer.epochs=1"]
