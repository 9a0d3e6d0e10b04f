"""The GPU check's dry run (`DEVICE=cpu`): the same script a lent GPU runs, on tiny CPU settings, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_the_device_check_dry_run_records_every_step(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "device_check.json").read_text())
    steps = result["steps"]
    assert result["device"] == "cpu" and set(steps) == {"tests_cuda", "bench_small_fp32", "train_small"}
    assert all(step["exit_code"] == 0 for step in steps.values())
    assert steps["bench_small_fp32"]["json"]["train_images_per_s"] > 0
    assert 0 <= steps["train_small"]["json"]["test_error"] <= 100
    assert "needs a CUDA device" in (tmp_path / "device_check.log").read_text()  # the cuda tests skip cleanly
