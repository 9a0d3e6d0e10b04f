"""The GPU check, prepared to run in one short lease of a lent GPU (BENCHMARKS.md, "GPU check").

    DEVICE=cuda python3 scripts/device_check.py --out "$OUT"     # on the lent machine (scripts/device_check.sh)
    DEVICE=cpu  python  scripts/device_check.py --out /tmp/dry   # the dry run `make test` runs: tiny, CPU

Steps, each time-boxed, each recorded even when it fails: the tests marked `cuda`; `nin bench --json` for the
paper NIN and fast_cifar10 in fp32, TF32 and bf16, with and without torch.compile, and the bf16 matmul peak they
are shares of; a fast_cifar10 training on the carried JPEG copy to its end, scored on test. Everything goes to
OUT/device_check.json (one object: step → command, exit code, seconds, parsed JSON or output tail) and
OUT/device_check.log. The dry run does the same steps on tiny synthetic settings, so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TINY = ["dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,16,16]", "dataset.size=96",
        "dataset.val_size=16", "trainer.batch_size=16", "trainer.device=cpu", "trainer.num_threads=1"]


def steps(device: str, jpeg: Path) -> dict[str, tuple[list[str], int]]:
    """name → (argv after `python -m`, time limit in seconds)."""
    nin = [sys.executable, "-m", "nin_cli"]
    if device == "cpu":
        bench = ["bench", *TINY, "--steps", "1", "--rounds", "1", "--workers", "0", "--json"]
        return {"tests_cuda": ([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
                                "tests/test_cuda.py"], 120),
                "bench_small_fp32": ([*nin, *bench], 120),
                "train_small": ([*nin, "train", *TINY, "trainer.epochs=1", "--json",
                                 "hydra.run.dir=outputs/device_check/train"], 120)}
    plan = {"tests_cuda": ([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
                            "tests/test_cuda.py"], 150)}
    for preset in ("paper_cifar10_aug", "fast_cifar10"):
        for precision, extra in (("fp32", []), ("tf32", ["trainer.tf32=true"]), ("bf16", ["trainer.precision=bf16"])):
            for compiled in (False, True):
                name = f"bench_{preset}_{precision}{'_compile' if compiled else ''}"
                plan[name] = ([*nin, "bench", f"experiment={preset}", "trainer.device=cuda", *extra,
                               f"trainer.compile={str(compiled).lower()}", "--steps", "20", "--rounds", "3",
                               "--no-conventional", "--json"], 60)
    plan["train_fast_cifar10"] = ([*nin, "train", "experiment=fast_cifar10", "dataset=imagefolder",
                                   f"dataset.root={jpeg}", "dataset.image_shape=[3,32,32]", "dataset.num_classes=10",
                                   "trainer.device=cuda", "trainer.precision=bf16", "--json",
                                   "hydra.run.dir=outputs/device_check/fast_cifar10"], 240)
    return plan


def run_step(argv: list[str], limit: int, log) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as timeout:
        code, out, err = 124, timeout.stdout or "", timeout.stderr or ""
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else x for x in (out, err))
    seconds = time.perf_counter() - start
    log.write(f"$ {' '.join(argv)}\n{out}{err}[exit {code}, {seconds:.1f} s]\n\n")
    log.flush()
    record = {"command": " ".join(argv), "exit_code": code, "seconds": round(seconds, 1)}
    try:
        record["json"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except ValueError:
        record["tail"] = (out + err)[-2000:]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/device_check")))
    parser.add_argument("--jpeg", type=Path, default=Path(".device/cifar10-jpeg"),
                        help="the carried CIFAR-10 JPEG copy (train/, test/ class folders)")
    args = parser.parse_args()
    device = os.environ.get("DEVICE", "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": {}}
    with open(args.out / "device_check.log", "w") as log:
        for name, (argv, limit) in steps(device, args.jpeg).items():
            result["steps"][name] = run_step(argv, limit, log)
            print(f"{name}: exit {result['steps'][name]['exit_code']} in {result['steps'][name]['seconds']} s",
                  flush=True)
            (args.out / "device_check.json").write_text(json.dumps(result, indent=1) + "\n")  # what ran, so far
    failed = [name for name, step in result["steps"].items() if step["exit_code"] != 0]
    print(f"wrote {args.out / 'device_check.json'}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
