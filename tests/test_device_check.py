"""The GPU check's dry run (`DEVICE=cpu`): the lease's own install — the same pip command, no index — into a
throwaway interpreter that has the image's packages but not this project, then the same script on tiny CPU settings
(its paper row planned from given speeds, trained for a few steps), so it cannot rot. Beside it: the carried wheels
against the image's package list, and the row's plan on made-up speeds."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO

spec = importlib.util.spec_from_file_location("device_check", REPO / "scripts" / "device_check.py")
device_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_check)


def bare_python(root: Path) -> Path:
    """An interpreter like the lent image's: the packages are there (this venv's site-packages, through a .pth
    file), this project is not (the editable install's own .pth is not read from a directory a .pth adds)."""
    venv.create(root, with_pip=False, symlinks=True)
    site = Path(sysconfig.get_paths(vars={"base": str(root), "platbase": str(root)})["purelib"])
    site.mkdir(parents=True, exist_ok=True)
    (site / "image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin" / "python"


def probe_wheel(folder: Path) -> Path:
    """A one-module wheel standing in for the carried ones (they are built by `make device-prep`, with a network)."""
    folder.mkdir()
    files = {"nin_probe/__init__.py": b"CARRIED = True\n",
             "nin_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: nin-probe\nVersion: 1.0\n",
             "nin_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()}"
                     f",{len(data)}\n" for name, data in files.items()) + "nin_probe-1.0.dist-info/RECORD,,\n"
    path = folder / "nin_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in {**files, "nin_probe-1.0.dist-info/RECORD": record.encode()}.items():
            wheel.writestr(name, data)
    return path


def jpeg_copy(root: Path, train: int = 4, test: int = 2) -> Path:
    """A tiny tree in the JPEG copy's layout: train/<class>/NNNN.jpg, test/<class>/NNNN.jpg, 32×32."""
    from PIL import Image

    for split, count in (("train", train), ("test", test)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (32, 32), (25 * c, 10 * i, 128)).save(folder / f"{i:04d}.jpg", quality=75)
    return root


def test_the_dry_run_installs_offline_plans_and_trains_the_row(tmp_path):
    python, out, work = bare_python(tmp_path / "py"), tmp_path / "out", tmp_path / "work"
    assert subprocess.run([python, "-c", "import nin_cli"], capture_output=True).returncode == 1  # not installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"DEVICE": "cpu", "PYTHON": str(python), "WHEELS": str(probe_wheel(tmp_path / "wheels").parent),
            "SITE": str(tmp_path / "site"), "OUT": str(out), "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), "--work", str(work), "--jpeg",
                           str(jpeg_copy(tmp_path / "jpeg")), "--speeds", "1:1e9,2:1.9e9", "--budget-s", "900"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "nin_probe" / "__init__.py").is_file()  # the carried wheels went to $SITE
    assert "every requirement of pyproject.toml is met" in proc.stdout
    result = json.loads((out / "device_check.json").read_text())
    steps = result["steps"]
    assert set(steps) == {"tests_cuda", "bench_row", "bench_row_x2", "prep_data", "row_train", "row_table"}
    assert {name: step["exit_code"] for name, step in steps.items()} == dict.fromkeys(steps, 0)
    assert steps["bench_row"]["json"]["train_images_per_s"] > 0 and steps["bench_row_x2"]["json"]["train_images_per_s"]
    assert "needs a CUDA device" in (out / "device_check.log").read_text()  # the cuda tests skip cleanly
    row = result["row"]
    assert (row["budget"], row["epochs"], row["seeds"], row["fits"]) == ("full", 260, 2, True)
    assert row["label"].startswith("paper_cifar10 on the CIFAR-10 JPEG copy (lossy), full budget (260 epochs")
    packed = json.loads((out / "paper_row.json").read_text())
    assert [r["seed"] for r in packed["runs"]] == [0, 1] and packed["budget"] == "full"
    for run in packed["runs"]:  # each trained in the temporary work folder, fresh: its own one-epoch curve
        assert Path(run["run_dir"]).is_relative_to(work) and run["exit_code"] == 0
        assert [r["epoch"] for r in run["curve"]] == [1] and 0 <= run["summary"]["test_error"] <= 100
    table = (out / "table.md").read_text()
    assert "`paper_cifar10`" in table and "CIFAR-10 JPEG copy (lossy)" in table and "| smoke |" in table
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.log", "paper_row.json",
                                                     "table.csv", "table.md"]  # at most 8 files come back


def test_a_missing_wheel_folder_stops_before_anything_runs(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "WHEELS": str(tmp_path / "none"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and proc.stderr.strip().splitlines() == [
        f"device check: no wheels in {tmp_path / 'none'}: run `make device-prep` and carry .device"]
    assert not (tmp_path / "out").exists()


def test_the_carried_wheels_fill_exactly_the_image_gaps():
    from importlib import metadata

    image, carried = device_check.IMAGE_PACKAGES, set(device_check.CARRIED)
    needed = {device_check.canonical(Requirement(r).name): Requirement(r) for r in device_check.requirements()}
    gaps, todo = set(), sorted(set(needed) - image)
    while todo:  # what the image lacks, and what that needs in turn (from the installed wheels' metadata)
        name = todo.pop()
        gaps.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and \
                    device_check.canonical(req.name) not in image | gaps:
                todo.append(device_check.canonical(req.name))
    assert gaps == carried  # exactly the gaps are carried
    assert not carried & image  # two versions of one package would stop the install
    for name, version in device_check.IMAGE_VERSIONS.items():  # the versions seen there meet pyproject.toml
        assert name not in needed or needed[name].specifier.contains(version), (name, version)
    assert device_check.missing_requirements(device_check.requirements()) == []
    assert device_check.missing_requirements(["no-such-package>=1"]) == ["no-such-package missing (needs >=1)"]
    assert "device_check.py --carried" in (REPO / "Makefile").read_text()  # device-prep builds this very list


@pytest.mark.parametrize("speeds, left, want", [
    ({1: 100_000.0}, 600, ("full", 1, True)),  # 130 s of training: the paper's 260 epochs fit
    ({1: 30_000.0, 2: 40_000.0}, 600, ("full", 1, True)),  # side by side faster in total, but 2 × full won't fit
    ({1: 30_000.0, 2: 31_000.0, 3: 60_000.0}, 3000, ("full", 3, True)),  # 2 gains too little; 3 does and fits
    ({1: 10_000.0, 2: 18_000.0}, 600, ("short", 2, True)),  # full does not fit; short fits twice side by side
    ({1: 10_000.0, 2: 10_500.0}, 600, ("short", 1, True)),  # side by side gains < 10 %: one process
    ({1: 1_000.0}, 600, ("short", 1, False)),  # nothing fits: short, cut by its time limit
])
def test_the_row_plan_takes_the_biggest_budget_and_most_seeds_that_fit(speeds, left, want):
    plan = device_check.plan_row(speeds, left, overhead_s=60)
    assert (plan["budget"], plan["seeds"], plan["fits"]) == want
    assert plan["epochs"] == {"full": 260, "short": 60}[plan["budget"]] and plan["time_limit_s"] == left - 60
    assert (plan["expected_train_s"] <= plan["time_limit_s"]) == plan["fits"]
    assert plan["reason"].startswith("nothing fits" if not plan["fits"] else plan["budget"])
