"""The wheel as a user gets it: built offline from the checkout, installed (no deps) into a fresh venv that sees the
test environment's packages, then `nin` run from an empty directory: no checkout, no conf/ nearby."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "src", "conf")


def build_wheel(tmp: Path) -> Path:
    """Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds, and the checkout is
    shared. No build isolation and no index: nothing is downloaded."""
    tree = tmp / "tree"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "-w", str(dist), str(tree)], check=True, timeout=120)
    (wheel,) = dist.glob("nin_cli-*.whl")
    return wheel


def fresh_venv(path: Path) -> Path:
    """A venv over the test environment's packages (torch, Hydra, ...) but not its nin_cli: a .pth line lists this
    environment's site-packages after the venv's own. (`--system-site-packages` would reach only the base
    interpreter's, without the test venv's packages, and would run the .pth files there, an editable nin_cli's
    among them; directories a .pth line adds get no .pth processing, so the checkout's install stays out.)"""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    Path(venv_site, "_test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def run(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_wheel_works_from_an_empty_directory(tmp_path):
    wheel = build_wheel(tmp_path)
    python = fresh_venv(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=120)
    nin = python.parent / "nin"
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NIN_CONFIG_DIR", "PYTHONPATH")}

    # the installed package, with every config file of conf/ inside it
    where = run([python, "-c", "import json, nin_cli, nin_cli.overrides as c; print(json.dumps([nin_cli.__file__, "
                 "str(c.config_dir()), nin_cli.__version__]))"], empty, env)
    assert where.returncode == 0, where.stderr
    module, conf, version = json.loads(where.stdout)
    assert Path(module).is_relative_to(tmp_path / "venv") and Path(conf) == Path(module).parent / "conf"
    shipped = sorted(p.relative_to(conf).as_posix() for p in Path(conf).rglob("*.yaml"))
    assert shipped == sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))

    # nin --version is the package's version, as pyproject.toml gives it
    project_version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = run([nin, "--version"], empty, env)
    assert result.returncode == 0 and result.stdout.strip() == f"nin {project_version}" and version == project_version

    result = run([nin, "info", "experiment=paper_cifar10", "--json"], empty, env)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["params"] == 966986  # the paper's CIFAR-10 NIN: three mlpconv blocks and the GAP head
    assert [b["name"] for b in info["blocks"]] == ["mlpconv1", "mlpconv2", "mlpconv3", "head"]

    result = run([nin, "train", "experiment=demo_digits", "trainer.epochs=1", "trainer.max_steps_per_epoch=4",
                  "trainer.num_threads=1", "trainer.progress=plain", "--json"], empty, env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["experiment"], summary["dataset"], summary["epochs"], summary["steps"]) == (
        "demo_digits", "digits", 1, 4)
    assert [p.name for p in empty.iterdir()] == ["outputs"]  # nothing else lands in the working directory
    (run_dir,) = (empty / "outputs" / "train").iterdir()
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    for name in ("config.yaml", "provenance.json", "train.log", ".hydra/overrides.yaml", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
