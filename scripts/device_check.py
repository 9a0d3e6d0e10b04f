"""The GPU check, prepared to run in one short lease of a lent GPU (BENCHMARKS.md, "GPU check").

    bash scripts/device_check.sh                       # on the lent machine: the install, then this script
    DEVICE=cpu bash scripts/device_check.sh --work W   # the dry run `make test` runs: tiny, CPU, same commands
    python3 scripts/device_check.py --check-deps       # every requirement of pyproject.toml met here?
    python3 scripts/device_check.py --carried          # the wheels to carry (`make device-prep` builds them)

Steps, each time-boxed, each recorded even when it fails: the tests marked `cuda`; short `nin bench` runs (the
paper NIN as its table row trains it, alone and two processes side by side, plus bf16 + torch.compile and
fast_cifar10); the CIFAR-10 JPEG copy decoded and GCN+ZCA fitted once (`nin data`); then one paper row:
`experiment=paper_cifar10` on the JPEG copy, at the full 260-epoch schedule if the measured speed fits it in the
time left, else at the `short` budget, as many seeds side by side as raise the total throughput (`plan_row`: the
choice and its reason are written down). Each run writes its epoch curve as it goes; the curves are packed into
OUT/paper_row.json every few seconds, so a run cut by the lease's end still says how far it got. OUT holds at most
five files: device_check.json (step → command, exit code, seconds, parsed JSON or output tail; the plan),
device_check.log, paper_row.json, table.md and table.csv (`nin table`: the row labelled "CIFAR-10 JPEG copy" and its
budget). The dry run does the same on tiny settings; it plans from the speeds given with --speeds and trains the
row at the smoke budget, so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,16,16]", "dataset.size=96",
        "dataset.val_size=16", "trainer.batch_size=16", "trainer.device=cpu", "trainer.num_threads=1"]
ROW = "paper_cifar10"
BUDGET_EPOCHS = {"full": 260, "short": 60}  # the preset's own schedule; reproduce.SHORT_SCHEDULES["cifar10"]
BUDGET_SEEDS = {"full": 3, "short": 2}  # reproduce.BUDGETS
ROW_IMAGES = 50_000  # the table's protocol: train+val
# What the lent machines' image holds (KINDS.md, "Python packages already there", read 2026-11-17), and the few
# versions a session saw there. Carry only what is missing: two versions of one package stop the install.
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp""".split())
IMAGE_VERSIONS = {"torch": "2.11.0", "torchvision": "0.26.0", "numpy": "2.5.2", "onnx": "1.23.1",
                  "onnxruntime": "1.30.0", "onnxscript": "0.7.2", "safetensors": "0.8.0"}
CARRIED = {"hydra-core": "1.3.8", "omegaconf": "2.3.0", "antlr4-python3-runtime": "4.9.3"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------ the environment


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    import tomllib

    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def missing_requirements(reqs: list[str]) -> list[str]:
    """Each requirement not met by what this interpreter can import (the image, the carried wheels on PYTHONPATH),
    and each carried wheel's own requirement not met, as one phrase."""
    from importlib import metadata

    from packaging.requirements import Requirement

    problems, todo, seen = [], [Requirement(r) for r in reqs], set()
    while todo:
        req = todo.pop()
        if (req.marker is not None and not req.marker.evaluate({"extra": ""})) or canonical(req.name) in seen:
            continue
        seen.add(canonical(req.name))
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} missing (needs {req.specifier or 'any version'})")
            continue
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name} {version} does not meet {req.specifier}")
        if canonical(req.name) in CARRIED:  # a carried wheel's needs are the image's or another carried wheel's
            todo += [Requirement(r) for r in metadata.requires(req.name) or []]
    return problems


def check_deps() -> int:
    problems = missing_requirements(requirements())
    if problems:
        print(f"device check: {'; '.join(problems)}: carry them as wheels (`make device-prep`, BENCHMARKS.md)",
              file=sys.stderr)
        return 3
    print("device check: every requirement of pyproject.toml is met")
    return 0


# ------------------------------------------------------------------------------------------------- the steps


def nin(*args: str) -> list[str]:
    return [sys.executable, "-m", "nin_cli", *args]


def short_steps(device: str) -> dict[str, tuple[list[str], int]]:
    """name → (argv, time limit in seconds): the tests and the benches, before the row."""
    tests = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    if device == "cpu":
        bench = ["bench", *TINY, "--steps", "1", "--rounds", "1", "--workers", "0", "--peak-size", "128", "--json"]
        return {"tests_cuda": (tests, 120), "bench_row": (nin(*bench), 120)}
    fast = ["--steps", "30", "--rounds", "1", "--no-conventional", "--json"]
    return {"tests_cuda": (tests, 150),
            "bench_row": (nin("bench", f"experiment={ROW}", "trainer.device=cuda", *fast), 60),
            "bench_paper_aug_bf16_compile": (nin("bench", "experiment=paper_cifar10_aug", "trainer.device=cuda",
                                                 "trainer.precision=bf16", "trainer.compile=true",
                                                 "trainer.compile_mode=reduce-overhead", *fast), 90),
            "bench_fast_cifar10_bf16": (nin("bench", "experiment=fast_cifar10", "trainer.device=cuda",
                                            "trainer.precision=bf16", *fast), 60)}


def finish_record(argv: list[str], code: int, out: str, err: str, seconds: float, log) -> dict:
    log.write(f"$ {' '.join(argv)}\n{out}{err}[exit {code}, {seconds:.1f} s]\n\n")
    log.flush()
    record = {"command": " ".join(argv), "exit_code": code, "seconds": round(seconds, 1)}
    try:
        record["json"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except ValueError:
        record["tail"] = (out + err)[-2000:]
    return record


def run_step(argv: list[str], limit: float, log) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=max(limit, 1), cwd=REPO)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as timeout:
        code, out, err = 124, timeout.stdout or "", timeout.stderr or ""
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else x for x in (out, err))
    return finish_record(argv, code, out, err, time.perf_counter() - start, log)


def run_side_by_side(argv: list[str], copies: int, limit: float, log) -> dict:
    """`copies` processes of `argv` at once (separate processes on the one device); their images/s added up."""
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(copies)]
    records = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1, limit - (time.perf_counter() - start)))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            code = 124
        records.append(finish_record(argv, code, out, err, time.perf_counter() - start, log))
    speeds = [(r.get("json") or {}).get("train_images_per_s") for r in records]
    total = sum(speeds) if all(isinstance(s, int | float) for s in speeds) else None
    return {"command": f"{copies} × {' '.join(argv)}", "exit_code": max(r["exit_code"] for r in records),
            "seconds": round(time.perf_counter() - start, 1), "json": {"train_images_per_s": total},
            "each": [r.get("json") or {"tail": r.get("tail", "")} for r in records]}


# ------------------------------------------------------------------------------------------------- the row


def plan_row(speeds: dict[int, float], seconds_left: float, overhead_s: float = 60.0, gain: float = 1.1) -> dict:
    """Which paper row fits the time left. `speeds`: processes side by side → their total training images/s, as
    benched (1 always). Side by side counts only when it raises the total by `gain` over one process. The full
    260-epoch schedule is preferred to the short one, and at a budget more seeds to fewer; each process needs
    `overhead_s` beyond its epochs (start, loading, the final test). When nothing fits: the short budget, one
    process, cut by its time limit (trainer.max_time), and the plan says about how far it will get."""
    usable = sorted(n for n, v in speeds.items() if n == 1 or v >= gain * speeds[1])
    train_s = max(seconds_left - overhead_s, 0.0)  # every run's trainer.max_time: it never outlives the lease
    common = {"time_limit_s": round(train_s, 1), "seconds_left": round(seconds_left, 1), "speeds": speeds}
    for budget in ("full", "short"):
        for n in sorted((n for n in usable if n <= BUDGET_SEEDS[budget]), reverse=True):
            need = BUDGET_EPOCHS[budget] * ROW_IMAGES / (speeds[n] / n)
            if need <= train_s:
                return {"budget": budget, "epochs": BUDGET_EPOCHS[budget], "seeds": n, "fits": True,
                        "expected_train_s": round(need, 1), **common,
                        "reason": f"{budget}: {BUDGET_EPOCHS[budget]} epochs × {ROW_IMAGES:,} images at "
                                  f"{speeds[n] / n:,.0f} img/s per process ({n} side by side) take {need:.0f} s "
                                  f"of the {train_s:.0f} s left for training"}
    reach = train_s * speeds[1] / ROW_IMAGES
    return {"budget": "short", "epochs": BUDGET_EPOCHS["short"], "seeds": 1, "fits": False,
            "expected_train_s": round(BUDGET_EPOCHS["short"] * ROW_IMAGES / speeds[1], 1), **common,
            "reason": f"nothing fits: at {speeds[1]:,.0f} img/s the {train_s:.0f} s left hold about {reach:.1f} of "
                      f"the short budget's {BUDGET_EPOCHS['short']} epochs; trained until its time limit"}


def parse_speeds(text: str) -> dict[int, float]:
    """--speeds 1:9000,2:15000 → {1: 9000.0, 2: 15000.0} (the dry run's stand-in for the benches)."""
    speeds = {int(n): float(v) for n, v in (item.split(":") for item in text.split(","))}
    if 1 not in speeds or min(speeds.values()) <= 0:
        raise argparse.ArgumentTypeError("needs 1:IMAGES_PER_S and positive speeds, e.g. 1:9000,2:15000")
    return speeds


def planned_runs(budget: str, seeds: int, jpeg: Path, work: Path, extra: list[str], dry: bool) -> list:
    """The table runner's own runs of the row (run directory, overrides, the meta `nin table` labels it by), plus
    this lease's `extra` (device, time limit) and a cache under `work`. The dry run shapes them as the full budget
    (its seed slots, no schedule keys for `extra` to repeat) and labels them smoke, not comparable."""
    from nin_cli.reproduce import plan

    runs = plan("full" if dry else budget, [ROW], jpeg, work / "runs", seeds=list(range(seeds)))
    for run in runs:
        run.overrides = [*run.overrides[:-1], f"dataset.cache_dir={work / 'cache'}", "trainer.progress=plain",
                         *extra, run.overrides[-1]]  # hydra.run.dir stays last
        run.meta["overrides"] = run.overrides
        if dry:
            run.meta.update(budget="smoke", comparable=False, why_not="the device check's dry run")
    return runs


def curve(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return rows


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pack(out: Path, row: dict, runs: list, procs: list, logs: list[Path]) -> None:
    """OUT/paper_row.json, whole or not at all: the plan, and per run its curve so far, summary, exit, log tail."""
    row["runs"] = [{"seed": run.seed, "run_dir": str(run.run_dir), "command": run.command,
                    "exit_code": proc.poll() if proc else None, "curve": curve(run.run_dir),
                    "summary": read_json(run.run_dir / "summary.json"),
                    "log_tail": log.read_text(errors="replace")[-1500:] if log.exists() else ""}
                   for run, proc, log in zip(runs, procs, logs, strict=True)]
    tmp = out / ".paper_row.json.tmp"
    tmp.write_text(json.dumps(row, indent=1) + "\n")
    tmp.replace(out / "paper_row.json")


def wait_packing(out: Path, row: dict, runs: list, procs: list, logs: list[Path], deadline: float,
                 every: float) -> None:
    """Until every run ends or the deadline: repack the curves every `every` seconds. At the deadline each run gets
    SIGTERM (it saves a checkpoint and exits 143), then SIGKILL 20 s later."""
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        pack(out, row, runs, procs, logs)
        time.sleep(min(every, max(0.1, deadline - time.time())))
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    pack(out, row, runs, procs, logs)


def label_cuts(runs: list, epochs: int) -> None:
    """A run the lease cut (no summary, or stopped by its time limit before its epochs) stays in the table,
    labelled not comparable with how far it got."""
    for run in runs:
        summary = read_json(run.run_dir / "summary.json") or {}
        got = summary.get("epochs") if summary else len(curve(run.run_dir))
        if summary and got >= epochs and not summary.get("stopped_because"):
            continue
        meta = read_json(run.run_dir / "reproduce.json") or dict(run.meta)
        meta.update(comparable=False, why_not=f"cut by the lease's time limit at epoch {got} of {epochs}")
        (run.run_dir / "reproduce.json").write_text(json.dumps(meta, indent=1) + "\n")


# DEVICE=cpu: the row at a few steps of tiny batches on the CPU (the full budget's shape, see `planned_runs`)
DRY_ROW = ["trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.batch_size=16", "trainer.eval_batch_size=100",
           "dataset.preprocessing=mean_std", "dataset.val_size=16", "trainer.device=cpu", "trainer.num_threads=1"]


def record(result: dict, out: Path, name: str, step: dict) -> dict:
    """Keep a step's record and rewrite device_check.json: what ran so far survives a cut lease."""
    result["steps"][name] = step
    print(f"{name}: exit {step['exit_code']} in {step['seconds']} s", flush=True)
    (out / "device_check.json").write_text(json.dumps(result, indent=1) + "\n")
    return step


def measured_speeds(steps: dict) -> dict[int, float]:
    """{processes side by side: total training images/s} from the row's benches; 1 img/s when they failed (the
    plan then trains the short budget until its time limit)."""
    speeds = {}
    for n, name in ((1, "bench_row"), (2, "bench_row_x2")):
        value = ((steps.get(name) or {}).get("json") or {}).get("train_images_per_s")
        if isinstance(value, int | float) and value > 0:
            speeds[n] = float(value)
    return speeds if 1 in speeds else {1: 1.0}


def launch(runs: list, work: Path) -> tuple[list, list[Path]]:
    """One `nin train` process per run, side by side; each run directory gets the reproduce.json `nin table`
    reads (budget, data label, seed) first."""
    procs, logs = [], []
    (work / "logs").mkdir(parents=True, exist_ok=True)
    for run in runs:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "reproduce.json").write_text(json.dumps({**run.meta, "command": run.command}, indent=1))
        log = work / "logs" / f"seed{run.seed}.log"
        with open(log, "w") as handle:
            procs.append(subprocess.Popen(nin("train", *run.overrides), stdout=handle, stderr=subprocess.STDOUT,
                                          cwd=REPO))
        logs.append(log)
    return procs, logs


def train_row(args, device: str, work: Path, result: dict, log) -> None:
    """Prepare the data, plan the row from the benches' speeds and the time left, train it side by side while
    packing the curves, label cut runs, and write the table."""
    dry = device == "cpu"
    extra = DRY_ROW if dry else ["trainer.device=cuda"]
    (first,) = planned_runs("full", 1, args.jpeg, work, extra, dry)
    prep = nin("data", *[o for o in first.overrides if o.startswith(("experiment=", "dataset"))])
    record(result, args.out, "prep_data", run_step(prep, min(300, args.deadline - time.time()), log))
    speeds = args.speeds or measured_speeds(result["steps"])
    row = plan_row(speeds, args.deadline - time.time() - args.margin, args.overhead)
    row["label"] = (f"{ROW} on the CIFAR-10 JPEG copy (lossy), {row['budget']} budget ({row['epochs']} epochs, "
                    f"{row['seeds']} seed{'s' if row['seeds'] > 1 else ''} side by side)")
    row["trained_at"] = "smoke (dry run: the plan is recorded, a few CPU steps trained)" if dry else row["budget"]
    result["row"] = row
    limit = f"trainer.max_time={max(row['time_limit_s'], 1.0):.0f}"
    runs = planned_runs(row["budget"], row["seeds"], args.jpeg, work, [*extra, limit], dry)
    start = time.perf_counter()
    procs, logs = launch(runs, work)
    wait_packing(args.out, row, runs, procs, logs, args.deadline - args.margin, 1.0 if dry else 10.0)
    codes = [p.returncode for p in procs]
    label_cuts(runs, 1 if dry else row["epochs"])
    record(result, args.out, "row_train", {"command": runs[0].command, "exit_code": max(codes),
                                           "exit_codes": codes, "seconds": round(time.perf_counter() - start, 1)})
    table = nin("table", str(work / "runs"), "--out", str(args.out))
    record(result, args.out, "row_table", run_step(table, max(30.0, args.deadline - time.time()), log))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/device_check")))
    parser.add_argument("--jpeg", type=Path, default=Path(".device/cifar10-jpeg"),
                        help="the carried CIFAR-10 JPEG copy (train/, test/ class folders)")
    parser.add_argument("--work", type=Path, default=None, help="run directories and caches (default: a new "
                                                                  "temporary folder: never a finished run's)")
    parser.add_argument("--started", type=float, default=time.time(), help="when the lease's command began (s)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds from --started to the last file")
    parser.add_argument("--margin", type=float, default=30.0, help="seconds kept for the table and the files")
    parser.add_argument("--overhead", type=float, default=60.0, help="seconds a training needs beyond its epochs")
    parser.add_argument("--speeds", type=parse_speeds, default=None, help="N:IMAGES_PER_S,... instead of the benches")
    parser.add_argument("--check-deps", action="store_true", help="check pyproject.toml's requirements, then exit")
    parser.add_argument("--carried", action="store_true", help="print the wheels to carry (NAME==VERSION), then exit")
    args = parser.parse_args()
    args.deadline = args.started + args.budget_s
    args.jpeg = args.jpeg.expanduser().resolve()
    return args


def main() -> int:
    args = parse_args()
    if args.check_deps:
        return check_deps()
    if args.carried:
        print(" ".join(f"{name}=={version}" for name, version in CARRIED.items()))
        return 0
    device = os.environ.get("DEVICE", "cuda")
    work = args.work or Path(tempfile.mkdtemp(prefix="nin-device-check-"))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "work": str(work), "steps": {}}
    with open(args.out / "device_check.log", "w") as log:
        for name, (argv, limit) in short_steps(device).items():
            record(result, args.out, name, run_step(argv, min(limit, args.deadline - time.time()), log))
        bench = short_steps(device)["bench_row"][0]
        record(result, args.out, "bench_row_x2", run_side_by_side(bench, 2, 120 if device == "cpu" else 90, log))
        train_row(args, device, work, result, log)
    cut = result["row"]["fits"] is False  # a planned cut: its runs end by SIGTERM (143) at the deadline
    failed = [name for name, step in result["steps"].items()
              if step["exit_code"] != 0 and not (name == "row_train" and cut and step["exit_code"] == 143)]
    print(f"wrote {args.out / 'device_check.json'}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
