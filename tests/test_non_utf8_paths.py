"""Run directories and checkpoints under folder names that are not UTF-8 (bytes a POSIX file system allows):
`nin eval`, `nin export` and `nin plot` take them from the real command line and finish, or say one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def nin_bytes(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m nin_cli ARGS` with each argument as the bytes a shell would pass (os.fsencode)."""
    argv = [sys.executable, "-m", "nin_cli", *(os.fsencode(a) for a in args)]
    return subprocess.run(argv, cwd=cwd, capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_eval_export_and_plot_take_a_non_utf8_folder(tiny_run, tmp_path):
    folder = tmp_path / os.fsdecode(b"runs-\xff\xfe-\xe9t\xe9")  # Latin-1 bytes: not UTF-8
    run = folder / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    ckpt = run / "checkpoints" / "best.pt"

    evaluated = nin_bytes("eval", ckpt, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr.decode(errors="replace")[-2000:]
    metrics = json.loads(evaluated.stdout)
    assert 0.0 <= metrics["top1_error"] <= 100.0 and metrics["n"] > 0
    assert (run / "eval" / "best_test" / "metrics.json").is_file()

    exported = nin_bytes("export", ckpt, "--format", "safetensors", "--out", folder / "model.safetensors",
                         cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr.decode(errors="replace")[-2000:]
    assert (folder / "model.safetensors").stat().st_size > 1000

    plotted = nin_bytes("plot", run, "--out", folder / "curves.png", cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr.decode(errors="replace")[-2000:]
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for proc in (evaluated, exported, plotted):
        assert b"Traceback" not in proc.stderr


def test_train_refuses_a_non_utf8_run_directory_before_writing(tmp_path):
    """A run directory under a non-UTF-8 name (here: the working directory's) is refused with one line, exit 2,
    and nothing is created: TensorBoard and Hydra's records could not name it."""
    cwd = tmp_path / os.fsdecode(b"w\xffd")
    cwd.mkdir()
    proc = nin_bytes("train", "dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,8,8]",
                     "dataset.size=32", "dataset.val_size=8", "trainer.epochs=1", "hydra.run.dir=run", cwd=cwd)
    lines = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "not UTF-8" in lines[0], lines
    assert list(cwd.iterdir()) == []


def test_an_onnx_export_to_a_non_utf8_path_is_one_line_exit_2(tiny_run, tmp_path):
    """ONNX, TorchScript and torch.export write and reload through C++ that takes UTF-8 paths only: refused before
    anything is written (safetensors, through bytes, works: above)."""
    folder = tmp_path / os.fsdecode(b"out-\xff")
    folder.mkdir()
    proc = nin_bytes("export", tiny_run / "checkpoints" / "best.pt", "--format", "onnx", "--out",
                     folder / "model.onnx", cwd=tmp_path)
    lines = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "not UTF-8" in lines[0], lines
    assert list(folder.iterdir()) == []
