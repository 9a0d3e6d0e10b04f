"""Hostile files and paths (issue #19, items 3-8): every case exits with its code and one line, never a traceback,
and creates, changes or loses nothing it should not.

Each case sets up its files, names the command and what must hold; `test_a_hostile_case` runs it through the real
CLI in-process and compares the watched folders before and after. Cases that need real file permissions run in
a subprocess without root's privileges (`test_permissions`). Exit codes: 2 for what the command line names (an
override, `hydra.run.dir`, `--out`: a path that is a file, under a file or not writable), 3 for a file that is not
what it claims (damaged run files, bad data, a checkpoint whose config or weights are wrong), 4 for an unsafe one.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, Result
from test_data import idx_bytes, md5, write_cifar, write_folder

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_PROC = Path("/proc/self").is_dir()  # /proc refuses new files even to root: an unwritable place for any user


class Canary:
    """Unpickling this writes a file: the proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('code ran')",)


@dataclass
class Case:
    args: list[str]
    code: int
    needles: tuple[str, ...] = ()
    quiet: bool = True  # stderr is the error line alone (a run that started also logs its progress)
    unchanged: list[Path] | None = None  # folders/files that must come out byte for byte as they went in (None: tmp)
    check: Callable[[Result], None] | None = None
    max_s: float | None = None  # a refusal that must not read the whole file


@dataclass
class Ctx:
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    tiny: Path  # the shared tiny trained run: read, never written

    def run_copy(self) -> Path:
        run = self.tmp / "run"
        shutil.copytree(self.tiny, run, ignore=shutil.ignore_patterns("eval"))
        return run

    def record(self) -> dict:
        from nin_cli.checkpoint import load_checkpoint

        record = load_checkpoint(self.tiny / "checkpoints" / "best.pt")
        for key in ("format", "version", "sha256"):
            record.pop(key)
        return record

    def checkpoint(self, record: dict | None = None, name: str = "model.pt") -> Path:
        """A sealed checkpoint on its own (outside a run directory) with `record` (default: the tiny run's)."""
        from nin_cli.checkpoint import save_checkpoint

        path = self.tmp / "solo" / name
        save_checkpoint(path, self.record() if record is None else record)
        return path

    def afile(self) -> Path:
        path = self.tmp / "afile"
        path.write_text("a file, not a directory\n")
        return path


def snapshot(*roots: Path) -> dict[str, object]:
    """Every file's content hash (size and mtime past 64 MiB: the sparse 3 GiB file) and every folder (None) under
    `roots` (a root may be a file)."""
    import hashlib

    found: dict[str, object] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*")) if root.exists() else []
        for path in paths:
            if not path.is_file():
                found[str(path)] = None
            elif path.stat().st_size > 64 << 20:
                found[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns)
            else:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def event_records(tb: Path) -> list[bytes]:
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    records = [r for p in sorted(tb.glob("events.out.tfevents.*")) for r in RawEventFileLoader(str(p)).Load()]
    for record in records:
        Event.FromString(record)  # every record kept is an event
    return records


CASES: dict[str, Callable[[Ctx], Case]] = {}


def case(fn: Callable[[Ctx], Case]) -> Callable[[Ctx], Case]:
    CASES[fn.__name__.replace("_", "-")] = fn
    return fn


# ------------------------------------------------------------------ 3: damaged files a resume rewrites


def _resumed_rows(run: Path):
    def check(result: Result) -> None:
        rows = (run / "metrics.jsonl").read_bytes().decode("utf-8").splitlines()  # all UTF-8 again
        assert [json.loads(row)["epoch"] for row in rows] == [1, 2], rows
    return check


@case
def metrics_not_utf8(ctx):
    run = ctx.run_copy()
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"epoch": 1, "note": "\xff\xfe"}\n\xc3\x28 not text\n')
    return Case(["train", f"hydra.run.dir={run}"], 0, quiet=False, unchanged=[run / "checkpoints"],
                check=_resumed_rows(run))


@case
def metrics_garbage_lines(ctx):
    run = ctx.run_copy()
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b"[" * 100_000 + b'\n{"epoch": "two"}\nnull\n{"epoch": true}\n{"epo')
    return Case(["train", f"hydra.run.dir={run}"], 0, quiet=False, unchanged=[run / "checkpoints"],
                check=_resumed_rows(run))


@case
def metrics_is_a_directory(ctx):
    run = ctx.run_copy()
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    return Case(["train", f"hydra.run.dir={run}"], 3, (f"{run / 'metrics.jsonl'}: cannot read it",), quiet=False,
                unchanged=[run / "checkpoints", run / "tb"])


@case
def events_record_not_an_event(ctx):
    """A record whose CRCs hold but whose bytes are no event: dropped, the rest kept."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    run = ctx.run_copy()
    with open(sorted((run / "tb").glob("events.*"))[0], "ab") as f:
        RecordWriter(f).write(b"\xff\xff\xff\xff not an event proto")

    def check(result: Result) -> None:
        assert event_records(run / "tb")  # each record an event again
        assert not any(b"not an event proto" in p.read_bytes() for p in (run / "tb").glob("events.*"))

    return Case(["train", f"hydra.run.dir={run}"], 0, quiet=False, unchanged=[run / "checkpoints"], check=check)


@case
def events_damaged_in_the_middle(ctx):
    """A flipped byte halfway through the biggest event file: the records before it are kept."""
    run = ctx.run_copy()
    path = max((run / "tb").glob("events.*"), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    def check(result: Result) -> None:
        assert event_records(run / "tb") and path.stat().st_size < len(data)

    return Case(["train", f"hydra.run.dir={run}"], 0, quiet=False, unchanged=[run / "checkpoints"], check=check)


@case
def events_file_is_a_directory(ctx):
    run = ctx.run_copy()
    bad = run / "tb" / "events.out.tfevents.0.host.1"
    bad.mkdir()
    return Case(["train", f"hydra.run.dir={run}"], 3, (f"{bad}: unreadable TensorBoard event file",), quiet=False,
                unchanged=[run / "checkpoints", run / "metrics.jsonl", run / "tb"])


@case
def train_log_is_a_directory(ctx):
    run = ctx.run_copy()
    (run / "train.log").unlink()
    (run / "train.log").mkdir()
    return Case(["train", f"hydra.run.dir={run}"], 3, (f"{run / 'train.log'}: Is a directory", "is damaged"),
                unchanged=[run / "checkpoints", run / "metrics.jsonl", run / "tb", run / "train.log"])


@case
def hydra_folder_is_a_file(ctx):
    run = ctx.run_copy()
    shutil.rmtree(run / ".hydra")
    (run / ".hydra").write_text("not a folder\n")
    return Case(["train", f"hydra.run.dir={run}"], 3, (f"{run / '.hydra'}", "is damaged"),
                unchanged=[run / "checkpoints", run / "metrics.jsonl", run / "tb", run / ".hydra"])


# -------------------------------------------------- 4, 5: values that passed validation, overrides that crashed


def _cli(*args: str, needle: str, code: int = 2):
    def make(ctx):
        return Case(["train", *args], code, (needle,))
    return make


CLI = {
    "image-shape-zero-height": _cli("dataset=synthetic", "dataset.image_shape=[3,0,32]", needle="must each be >= 1"),
    "image-shape-zero-channels": _cli("dataset=synthetic", "dataset.image_shape=[0,32,32]",
                                      needle="must each be >= 1"),
    "image-too-small-for-the-model": _cli("dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,2,2]",
                                          needle="model does not fit dataset.image_shape=[3, 2, 2]"),
    "seed-past-numpy": _cli("trainer.seed=100000000000000000000000",
                            needle="trainer.seed=100000000000000000000000: out of range, allowed [0, 4294967295]"),
    "seed-restarts-past-numpy": _cli("trainer.seed=4294967295", "trainer.collapse_restarts=1",
                                     needle="seeds run past 4294967295"),
    "integer-past-64-bits": _cli("trainer.epochs=100000000000000000000000", needle="must fit in 64 bits"),
    "num-classes-zero": _cli("dataset=synthetic", "dataset.num_classes=0",
                             needle="dataset.num_classes=0: out of range"),
    "key-of-20000-characters": _cli("a" * 20_000 + "=1", needle="nin: error: bad override"),
    "key-of-255-characters": _cli("a" * 255 + "=1", needle="nin: error: bad override"),
    "3000-nested-brackets": _cli("trainer.epochs=" + "[" * 3000 + "]" * 3000, needle="nin: error: bad override"),
    "3000-nested-braces": _cli("model.init_std_overrides=" + "{a:" * 3000 + "1" + "}" * 3000,
                               needle="nin: error: bad override"),
    "group-option-of-2000-characters": _cli("dataset=" + "a" * 2000, needle="no such option"),
}
CASES.update(CLI)


@case
def sweep_3000_nested_brackets(ctx):
    return Case(["sweep", "--dry-run", "trainer.epochs=" + "[" * 3000 + "]" * 3000], 2, ("nin: error: bad override",))


@case
def eval_override_key_of_20000_characters(ctx):
    return Case(["eval", ctx.checkpoint(), "a" * 20_000 + "=1"], 2, ("nin: error: bad override",))


@case
def eval_override_3000_nested_brackets(ctx):
    return Case(["eval", ctx.checkpoint(), "trainer.epochs=" + "[" * 3000 + "]" * 3000], 2,
                ("nin: error: bad override",))


# ------------------------------------------------------------- 6: output paths that are not writable folders


@case
def run_dir_is_a_file(ctx):
    return Case(["train", *FAST, f"hydra.run.dir={ctx.afile()}"], 2, ("exists and is not a directory",))


@case
def run_dir_under_a_file(ctx):
    afile = ctx.afile()
    return Case(["train", *FAST, f"hydra.run.dir={afile / 'run'}"], 2, (f"{afile} is a file, not a directory",))


@case
def run_dir_under_proc(ctx):
    if not HAS_PROC:
        pytest.skip("no /proc")
    return Case(["train", *FAST, "hydra.run.dir=/proc/nin-hostile-test/run"], 2,
                ("hydra.run.dir=/proc/nin-hostile-test/run", "cannot create or write the run directory"))


@case
def run_dir_read_only_skipped_as_root(ctx):
    """chmod does not stop root: skipped when the tests run as root (test_permissions covers it there)."""
    if os.geteuid() == 0:
        pytest.skip("root writes into a 0o555 folder; see test_permissions")
    locked = ctx.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return Case(["train", *FAST, f"hydra.run.dir={locked / 'run'}"], 2, (f"{locked} is not writable",))


@case
def eval_out_is_a_file(ctx):
    return Case(["eval", ctx.checkpoint(), "--json", "--out", ctx.afile()], 2, ("exists and is not a directory",))


@case
def eval_out_under_a_file(ctx):
    afile = ctx.afile()
    return Case(["eval", ctx.checkpoint(), "--json", "--out", afile / "out"], 2, (f"{afile} is a file",))


@case
def eval_out_under_proc(ctx):
    if not HAS_PROC:
        pytest.skip("no /proc")
    return Case(["eval", ctx.checkpoint(), "--json", "--out", "/proc/nin-hostile-test/out"], 2,
                ("/proc/nin-hostile-test/out", "give --out DIR"))


def _bug(ctx):
    def broken(overrides):
        raise KeyError("oops")
    ctx.monkeypatch.setattr("nin_cli.overrides.load_config", broken)


@case
def crash_log_in_an_unwritable_folder_goes_to_temp(ctx):
    if not HAS_PROC:
        pytest.skip("no /proc")
    _bug(ctx)
    temp = ctx.tmp / "temp"
    temp.mkdir()
    ctx.monkeypatch.setattr(tempfile, "tempdir", str(temp))
    ctx.monkeypatch.chdir("/proc")  # outputs/crash-*.log cannot be made here

    def check(result: Result) -> None:
        assert "traceback in " + str(temp) in result.err
        (log,) = temp.glob("nin-crash-*.log")
        assert "KeyError: 'oops'" in log.read_text()

    return Case(["train"], 1, ("internal error (KeyError)",), unchanged=[], check=check)


@case
def crash_log_nowhere_to_write(ctx):
    if not HAS_PROC:
        pytest.skip("no /proc")
    _bug(ctx)
    ctx.monkeypatch.setattr(tempfile, "tempdir", "/proc")
    ctx.monkeypatch.chdir("/proc")
    return Case(["train"], 1, ("internal error (KeyError); the traceback could not be saved",))


@case
def crash_inside_a_run_whose_log_cannot_be_written(ctx):
    if not HAS_PROC:
        pytest.skip("no /proc")
    temp = ctx.tmp / "temp"
    temp.mkdir()
    ctx.monkeypatch.setattr(tempfile, "tempdir", str(temp))
    ctx.monkeypatch.setattr("nin_cli.hydra_app._log_file", lambda run_dir: Path("/proc/nin-hostile-test/train.log"))

    def broken(cfg, run_dir):
        raise RuntimeError("bug")

    ctx.monkeypatch.setattr("nin_cli.train.fit", broken)

    def check(result: Result) -> None:
        assert result.err_lines[-1].startswith("nin: error: internal error (RuntimeError: bug); traceback in "
                                               + str(temp)), result.err
        assert "RuntimeError: bug" in next(temp.glob("nin-crash-*.log")).read_text()

    return Case(["train", *FAST, f"hydra.run.dir={ctx.tmp / 'run'}"], 1, quiet=False, unchanged=[], check=check)


# ----------------------------------------------------------------------------------- 7: bad data exits 3


@case
def imagefolder_empty_image(ctx):
    write_folder(ctx.tmp / "tree", {"a": 2, "b": 2})
    bad = ctx.tmp / "tree" / "train" / "b" / "001.png"
    bad.write_bytes(b"")
    return Case(["data", "dataset=imagefolder", f"dataset.root={ctx.tmp / 'tree'}", "dataset.val_size=2",
                 f"dataset.cache_dir={ctx.tmp / 'cache'}"], 3, (f"cannot decode {bad}", "empty file"))


@case
def imagefolder_empty_image_in_training(ctx):
    write_folder(ctx.tmp / "tree", {"a": 2, "b": 2})
    bad = ctx.tmp / "tree" / "train" / "a" / "000.png"  # the first image: the one whose shape is used
    bad.write_bytes(b"")
    run = ctx.tmp / "run"

    def check(result: Result) -> None:
        assert not list(run.glob("checkpoints/*"))

    return Case(["train", "dataset=imagefolder", "model=nin_small", f"dataset.root={ctx.tmp / 'tree'}",
                 "dataset.val_size=2", f"dataset.cache_dir={ctx.tmp / 'cache'}", f"hydra.run.dir={run}"], 3,
                (f"cannot decode {bad}",), quiet=False, unchanged=[ctx.tmp / "tree"], check=check)


def _mnist(root: Path, bad_labels: str) -> Path:
    """The four unpacked idx files under root/MNIST/raw; `bad_labels` ('train' or 't10k') holds a 12."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.RandomState(5)
    for prefix, n in (("train", 30), ("t10k", 8)):
        labels = g.randint(0, 10, n)
        if prefix == bad_labels:
            labels[n // 2] = 12
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(g.randint(0, 256, (n, 28, 28))))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return raw / f"{bad_labels}-labels-idx1-ubyte"


@case
def mnist_train_labels_out_of_range(ctx):
    bad = _mnist(ctx.tmp / "data", "train")
    return Case(["data", "dataset=mnist", f"dataset.root={ctx.tmp / 'data'}", "dataset.val_size=5"], 3,
                (f"mnist: {bad}: a label 12, outside 0-9",))


@case
def mnist_test_labels_out_of_range(ctx):
    bad = _mnist(ctx.tmp / "data", "t10k")
    return Case(["data", "dataset=mnist", f"dataset.root={ctx.tmp / 'data'}", "dataset.val_size=5"], 3,
                (f"mnist: {bad}: a label 12",))


@case
def cifar10_label_out_of_range(ctx):
    from torchvision import datasets

    write_cifar(ctx.tmp / "data", ctx.monkeypatch)
    folder = ctx.tmp / "data" / "cifar-10-batches-py"
    batch = pickle.loads((folder / "data_batch_3").read_bytes())
    batch["labels"][0] = 10
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    ctx.monkeypatch.setattr(datasets.CIFAR10, "train_list",
                            [[f, md5(folder / f)] for f, _ in datasets.CIFAR10.train_list])
    return Case(["data", "dataset=cifar10", f"dataset.root={ctx.tmp / 'data'}", "dataset.val_size=5"], 3,
                ("cifar10: the train files under", "a label 10, outside 0-9"))


# ------------------------------------------------------------------------------------- 8: checkpoints


def _mismatched(ctx) -> Path:
    record = ctx.record()
    model = dict(record["model"])
    first = next(iter(model))
    model[first] = model[first][:1].clone()  # a sealed file whose weights its stored config cannot take
    return ctx.checkpoint({**record, "model": model})


@case
def eval_config_does_not_match_weights(ctx):
    return Case(["eval", _mismatched(ctx), "--json"], 3, ("its config does not match its weights",))


@case
def eval_config_does_not_match_weights_with_unrelated_override(ctx):
    return Case(["eval", _mismatched(ctx), "--json", "trainer.eval_batch_size=7"], 3,
                ("its config does not match its weights",))


@case
def eval_override_changes_the_model(ctx):
    return Case(["eval", ctx.checkpoint(), "--json", "model.blocks.0.widths=[7,7]"], 2,
                ("the overrides change the model",))


@case
def eval_missing_checkpoint(ctx):
    return Case(["eval", ctx.tmp / "missing.pt", "--json"], 3, ("missing.pt: no such checkpoint file",))


@case
def eval_checkpoint_under_a_file(ctx):
    return Case(["eval", ctx.afile() / "best.pt", "--json"], 3, ("no such checkpoint file",))


@case
def eval_non_finite_weights(ctx):
    record = ctx.record()
    model = {k: v.clone() for k, v in record["model"].items()}
    first = next(iter(model))
    model[first] = model[first].contiguous()
    model[first].view(-1)[0] = float("nan")
    return Case(["eval", ctx.checkpoint({**record, "model": model}), "--json"], 3, ("non-finite weights",))


@case
def export_non_finite_weights(ctx):
    record = ctx.record()
    model = {k: v.clone() for k, v in record["model"].items()}
    last = next(reversed(model))
    model[last] = model[last].contiguous()
    model[last].view(-1)[-1] = float("inf")
    return Case(["export", ctx.checkpoint({**record, "model": model}), "--format", "safetensors"], 3,
                ("non-finite weights",))


@case
def sparse_3_gib_file_that_is_no_zip(ctx):
    path = ctx.tmp / "huge.pt"
    with open(path, "wb") as f:
        f.write(b"\x00 not an archive")
        f.truncate(3 << 30)  # sparse: no disk used, and the loader must not read it
    return Case(["eval", path, "--json"], 3, ("not a checkpoint",), max_s=20)


@case
def million_tiny_pickles(ctx):
    path = ctx.tmp / "tiny.pt"
    path.write_bytes(pickle.dumps(1, protocol=2) * 1_000_000)
    return Case(["eval", path, "--json"], 3, ("a raw pickle or legacy torch file",), max_s=20)


@case
def big_raw_pickle_importing_code_first(ctx):
    path = ctx.tmp / "evil.pt"
    path.write_bytes(pickle.dumps([Canary(ctx.tmp / "canary"), bytes(3 << 20)], protocol=2))

    def check(result: Result) -> None:
        assert not (ctx.tmp / "canary").exists()

    return Case(["eval", path, "--json"], 4, ("would execute code",), check=check)


@case
def zip_of_20001_entries(ctx):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}))
        for i in range(20_000):
            archive.writestr(f"archive/data/{i}", b"x")
    path = ctx.tmp / "many.pt"
    path.write_bytes(buffer.getvalue())
    return Case(["eval", path, "--json"], 3, ("an archive of 20,001 entries",), max_s=20)


@case
def zip_with_a_20_mb_pickle(ctx):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(list(range(4_000_000)), protocol=2))
    path = ctx.tmp / "bigpickle.pt"
    path.write_bytes(buffer.getvalue())
    return Case(["eval", path, "--json"], 3, ("its pickle 'archive/data.pkl' is",), max_s=20)


def _resume(ctx, path: Path, *extra: str) -> list[str]:
    return ["train", f"resume={path}", *extra]


def _evil_checkpoint(ctx) -> Path:
    """A sealed checkpoint outside any run directory whose pickle would create the canary if it ran."""
    from nin_cli.checkpoint import sealed_bytes

    path = ctx.tmp / "solo" / "evil.pt"
    path.parent.mkdir()
    path.write_bytes(sealed_bytes({"format": "nin-checkpoint", "version": 1, "config": {},
                                   "evil": Canary(ctx.tmp / "canary")}))
    return path


@case
def resume_malicious_checkpoint(ctx):
    path = _evil_checkpoint(ctx)

    def check(result: Result) -> None:
        assert not (ctx.tmp / "canary").exists()

    return Case(_resume(ctx, path), 4, ("would execute code",), check=check)


@case
def resume_malicious_checkpoint_with_missing_data(ctx):
    """The checkpoint is checked before the data: unsafe (4), not 'data missing' (3)."""
    path = _evil_checkpoint(ctx)
    return Case(_resume(ctx, path, "dataset=cifar10", f"dataset.root={ctx.tmp / 'nothing'}"), 4,
                ("would execute code",))


@case
def resume_checkpoint_with_hydra_in_its_config(ctx):
    record = ctx.record()
    record["config"] = {**record["config"], "hydra": {"callbacks": {"x": {"_target_": "os.system"}}}}
    return Case(_resume(ctx, ctx.checkpoint(record)), 4, ("its stored config sets Hydra keys",))


@case
def resume_checkpoint_with_target_in_its_config(ctx):
    record = ctx.record()
    config = record["config"]
    record["config"] = {**config, "model": {**config["model"], "init_std_overrides": {"_target_": 1.0}}}
    return Case(_resume(ctx, ctx.checkpoint(record)), 4, ("_target_",))


@case
def resume_checkpoint_with_interpolation_in_its_config(ctx):
    record = ctx.record()
    config = record["config"]
    record["config"] = {**config, "dataset": {**config["dataset"], "root": "${oc.env:HOME}"}}
    return Case(_resume(ctx, ctx.checkpoint(record)), 4, ("interpolation",))


@case
def resume_checkpoint_with_an_invalid_config(ctx):
    record = ctx.record()
    config = record["config"]
    record["config"] = {**config, "trainer": {**config["trainer"], "epochz": 3}}
    return Case(_resume(ctx, ctx.checkpoint(record)), 3, ("its stored config is not valid", "trainer.epochz"))


@case
def resume_truncated_checkpoint(ctx):
    path = ctx.checkpoint()
    path.write_bytes(path.read_bytes()[:5000])
    return Case(_resume(ctx, path), 3, (str(path),))


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_case(nin, tmp_path, monkeypatch, tiny_run, name):
    """(tiny_run is made at setup, not lazily: the logging its training leaves must not point at a test's capture)"""
    spec = CASES[name](Ctx(tmp_path, monkeypatch, tiny_run))
    watched = [tmp_path] if spec.unchanged is None else spec.unchanged
    before = snapshot(*watched)
    start = time.perf_counter()
    result = nin(*map(str, spec.args))
    took = time.perf_counter() - start
    text = result.out + result.err
    assert result.code == spec.code, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    if spec.code:
        assert result.err_lines and result.err_lines[-1].startswith("nin: "), text[-3000:]
        assert sum(line.startswith("nin: ") for line in result.err_lines) == 1, text[-3000:]
        if spec.quiet:
            assert len(result.err_lines) == 1, text[-3000:]
    for needle in spec.needles:
        assert needle in (result.err_lines[-1] if spec.code else text), (needle, text[-3000:])
    assert snapshot(*watched) == before, "files were created, changed or lost"
    if spec.max_s is not None:
        assert took < spec.max_s, took
    if spec.check is not None:
        spec.check(result)


def test_there_are_many_hostile_cases():
    assert len(CASES) >= 55


# ---------------------------------------------------------------- 4: refused before torch is imported


def test_bad_values_are_refused_before_torch_is_imported(tmp_path):
    script = """
import sys
from nin_cli.cli import main
codes = []
for args in sys.argv[1:]:
    sys.argv = ["nin", "train", *args.split(" ")]
    try:
        main()
    except SystemExit as exit_:
        codes.append(exit_.code)
print(codes, "torch" in sys.modules)
"""
    cases = ["dataset=synthetic dataset.image_shape=[3,0,32]", "dataset=synthetic dataset.image_shape=[0,32,32]",
             "trainer.seed=100000000000000000000000", "a" * 20_000 + "=1",
             "trainer.epochs=" + "[" * 3000 + "]" * 3000]
    out = subprocess.run([sys.executable, "-c", script, *cases], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split("\n")[-2] == "[2, 2, 2, 2, 2] False", out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == len(cases)
    assert list(tmp_path.iterdir()) == []  # no outputs/, no run directory


# ---------------------------------------------------------- 8d: resume=CKPT continues the config it stores


def test_resume_from_a_lone_checkpoint_uses_its_stored_config(nin, tiny_run, tmp_path):
    from nin_cli.config import to_dict
    from nin_cli.overrides import load_config

    lone = tmp_path / "lone.pt"
    shutil.copy(tiny_run / "checkpoints" / "last.pt", lone)
    run = tmp_path / "continued"
    result = nin("train", f"resume={lone}", "trainer.epochs=3", f"hydra.run.dir={run}")
    assert result.code == 0, result.err[-3000:]
    stored = to_dict(load_config([]))  # the defaults (CIFAR-10, the paper's model) are what it must NOT be
    import yaml

    used = yaml.safe_load((run / "config.yaml").read_text())
    trained = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert used["dataset"] == trained["dataset"] != stored["dataset"]
    assert used["model"] == trained["model"] and used["trainer"]["epochs"] == 3
    assert {k: v for k, v in used["trainer"].items() if k != "epochs"} == \
        {k: v for k, v in trained["trainer"].items() if k != "epochs"}
    assert "resuming from" in result.err
    again = nin("train", f"hydra.run.dir={run}")  # the new run's replayed overrides pass the untrusted check
    assert again.code == 0, again.err[-3000:]


# ------------------------------------------------- permissions: a subprocess without root's privileges


def run_unprivileged(*args: str, cwd: Path) -> Result:
    """`nin ARGS` in a process that file permissions apply to: as root, through setpriv without capabilities
    (uid 0 stays the owner, but owner bits of 0 then refuse it); skipped where that is not possible."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: file permissions cannot be tested")
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]
    proc = subprocess.run([*prefix, sys.executable, "-m", "nin_cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    if proc.stderr.startswith("setpriv:"):
        pytest.skip(f"setpriv cannot drop privileges here: {proc.stderr.strip()}")
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def locked(tmp_path):
    """A folder nobody may write (0o555) and one nobody may enter (0o000); permissions restored afterwards."""
    read_only, closed = tmp_path / "read-only", tmp_path / "closed"
    read_only.mkdir()
    closed.mkdir()
    yield read_only, closed
    read_only.chmod(0o755)
    closed.chmod(0o755)


PERMISSION_CASES = ["unreadable-checkpoint", "checkpoint-in-a-closed-folder", "run-dir-in-a-read-only-folder",
                    "eval-out-and-cwd-read-only"]


@pytest.mark.parametrize("name", PERMISSION_CASES)
def test_permissions(tiny_run, tmp_path, locked, name):
    read_only, closed = locked
    best = tiny_run / "checkpoints" / "best.pt"
    cwd = tmp_path
    if name == "unreadable-checkpoint":
        ckpt = tmp_path / "best.pt"
        shutil.copy(best, ckpt)
        ckpt.chmod(0)
        args, code, needle = ["eval", ckpt, "--json"], 3, f"{ckpt}: cannot read it (Permission denied)"
    elif name == "checkpoint-in-a-closed-folder":
        shutil.copy(best, closed / "best.pt")
        args, code, needle = ["eval", closed / "best.pt", "--json"], 3, "cannot read it (Permission denied)"
    elif name == "run-dir-in-a-read-only-folder":
        args, code, needle = ["train", *FAST, f"hydra.run.dir={read_only / 'run'}"], 2, f"{read_only} is not writable"
    else:  # the user can write neither --out nor the working directory (where a crash log would go)
        cwd = read_only
        args, code, needle = ["eval", best, "--json", "--out", read_only / "out"], 2, f"{read_only} is not writable"
    closed.chmod(0)
    read_only.chmod(0o555)
    before = snapshot(tmp_path / "best.pt", tiny_run)
    result = run_unprivileged(*args, cwd=cwd)
    closed.chmod(0o755)
    assert result.code == code, result.err
    assert len(result.err_lines) == 1 and "Traceback" not in result.err, result.err
    assert needle in result.err, result.err
    assert list(read_only.iterdir()) == [] and snapshot(tmp_path / "best.pt", tiny_run) == before
