"""scripts/host_table.py: the per-host table BENCHMARKS.md shows, built from `nin bench --json` files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("host_table", REPO / "scripts" / "host_table.py")
host_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_table)


def bench(images_per_s: float, gflops: float, share: float) -> dict:
    return {"device_name": "Test CPU", "threads": 2, "torch": "2.x", "date": "2026-12-07",
            "train_images_per_s": images_per_s, "train_gflops": gflops, "peak_share": share,
            "peak_fp32_gflops": 400.0, "peak_bf16_gflops": 2400.0}


def test_one_table_per_host_with_each_precision_its_peak_and_the_speedup(tmp_path):
    xeon, zen = tmp_path / "xeon", tmp_path / "zen"
    xeon.mkdir(), zen.mkdir()
    (xeon / "paper_cifar10_fp32.json").write_text(json.dumps(bench(200.0, 260.0, 0.65)))
    (xeon / "paper_cifar10_bf16.json").write_text(json.dumps(bench(500.0, 650.0, 0.27)))
    (zen / "paper_cifar10_fp32.json").write_text(json.dumps(bench(150.0, 195.0, 0.99)))
    (zen / "machine.txt").write_text("cpu: Zen, 2 cores")
    text = host_table.main(tmp_path)
    assert text.count("### Test CPU") == 2 and "cpu: Zen, 2 cores" in text
    rows = [line for line in text.splitlines() if line.startswith("| paper NIN")]
    assert rows == ["| paper NIN (CIFAR-10, batch 128) | fp32 | 200.0 | 260.0 | 400.0 | 65.0% | — |",  # xeon/
                    "| paper NIN (CIFAR-10, batch 128) | bf16 | 500.0 | 650.0 | 2,400.0 | 27.0% | 2.50× |",
                    "| paper NIN (CIFAR-10, batch 128) | fp32 | 150.0 | 195.0 | 400.0 | 99.0% | — |"]  # zen/


def test_the_host_slug_is_a_plain_directory_name():
    slug = host_table.slug()
    assert slug and all(c.isalnum() or c == "-" for c in slug) and slug == slug.lower()
