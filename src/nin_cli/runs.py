"""The run directory: resolved config, provenance, metrics.jsonl, summary.json, and the progress display.

Hydra writes `.hydra/` and `train.log` (through its job logging); everything else a run leaves is written here.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from nin_cli.config import NinConfig, to_dict
from nin_cli.errors import ConfigError, DataError
from nin_cli.files import atomic_write, one_line, open_append, read_json, read_yaml, refuse_unsafe_tree
from nin_cli.overrides import check_replayed_overrides, stored_config_overrides

log = logging.getLogger("nin")


@dataclass
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def tb(self) -> Path:
        return self.root / "tb"


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (temp file + rename) so a crash never leaves half a file."""
    atomic_write(path, text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_outcome(run_dir: Path, status: str, reason: str, exit_code: int | None = None, **facts: Any) -> None:
    """Why a run stopped short, in one record (RUN/outcome.json; results.read_outcome reads it back): failed |
    pruned | collapsed | diverged | no_data, a one-line reason, the exit code, and facts such as the pruned epoch."""
    write_json(run_dir / "outcome.json", {"status": status, "reason": one_line(reason, 300), "exit_code": exit_code,
                                          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts})


def clear_outcome(run_dir: Path) -> None:
    """A run tried again starts with no outcome (the files of earlier versions included)."""
    for name in ("outcome.json", "failure.json", "pruned.json"):
        (run_dir / name).unlink(missing_ok=True)


def write_run_files(cfg: NinConfig, run_dir: Path, device: str, start: bool = True) -> None:
    """config.yaml (as run) and, when a process `start`s on the run, provenance.json; a resumed run keeps its
    provenance and records the resume."""
    from omegaconf import OmegaConf  # only where a run starts: results.py's readers need none of it

    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
    if not start:
        return
    path = run_dir / "provenance.json"
    record = _provenance_record(path)
    if isinstance(record, dict):
        record.setdefault("resumes", []).append(provenance(device))
    else:
        record = provenance(device)
        if cfg.resume:
            record["resumed_from"] = cfg.resume
    write_json(path, record)


def record_provenance(run_dir: Path, facts: dict) -> None:
    """Add `facts` to the run's provenance.json (kept whole if it is unreadable: the facts start a new record)."""
    path = run_dir / "provenance.json"
    write_json(path, {**(_provenance_record(path) or {}), **facts})


def _provenance_record(path: Path) -> dict | None:
    """The run's provenance so far; None when missing or unreadable (the record starts again: it only describes)."""

    try:
        return read_json(path)
    except (FileNotFoundError, DataError):
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(device: str) -> dict:
    versions = {}
    for pkg in ("nin-cli", "torch", "torchvision", "hydra-core", "omegaconf", "numpy", "typer", "rich"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device,
        "command": sys.argv,
        "cwd": os.getcwd(),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def append_metrics(path: Path, row: dict) -> None:
    with open_append(path) as f:  # never through a link planted during the run
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def output_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be, or be made into, a directory to write in (None: it can), found without writing
    anything: the path or the nearest part of it that exists must be a writable directory."""
    import stat

    target = Path(path).expanduser().absolute()
    for candidate in (target, *target.parents):
        try:
            mode = candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there yet (made by mkdir), or under a file (found when the loop reaches it)
        except OSError as err:
            return f"{candidate} cannot be reached ({err.strerror or err})"
        if not stat.S_ISDIR(mode):
            return "exists and is not a directory" if candidate == target else f"{candidate} is a file, not a directory"
        if not os.access(candidate, os.W_OK | os.X_OK):
            return "is not writable" if candidate == target else f"{candidate} is not writable"
        return None
    return None


def _epoch_of(line: bytes) -> int | None:
    """The epoch of one metrics.jsonl row; None for a line cut short by a crash or otherwise damaged."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    epoch = row.get("epoch") if isinstance(row, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """On resume: keep only the rows of epochs the checkpoint covers, so no line is duplicated or cut short.
    Damaged lines (not UTF-8, not JSON, no epoch) are dropped with a warning: the run resumes all the same."""

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err}); repair or remove it to resume this "
                        "run") from None
    rows = [line for line in data.split(b"\n") if line.strip()]
    epochs = [_epoch_of(line) for line in rows]
    kept = [line for line, epoch in zip(rows, epochs, strict=True) if epoch is not None and epoch <= epochs_done]
    damaged = epochs.count(None)
    if damaged > 1 or (damaged and epochs[-1] is not None):  # a last line cut short by a crash is expected
        log.warning("dropped %d damaged line(s) of %s", damaged, path)
    try:
        atomic_write(path, b"".join(line + b"\n" for line in kept))
    except OSError as err:
        raise DataError(f"{path}: cannot rewrite it ({err.strerror or err})") from None


# ----------------------------------------------------------------------------------------- resuming a run


_HELD_LOCKS: dict[tuple[int, int], int] = {}  # (device, inode) of a locked directory → how often this process holds it


@contextmanager
def run_dir_lock(root: Path, what: str = "`nin train`"):
    """One nin process at a time per run (or sweep) directory (two would interleave checkpoints and metrics). An
    flock on the directory itself: no lock file to leave behind, and the kernel releases it when the process
    dies. Re-entrant within a process: `hydra_run` takes it before Hydra writes anything and `fit` (for every other
    caller) takes it again, and an flock is per open file, so a second open in the same process would refuse."""
    import fcntl

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    try:
        if key not in _HELD_LOCKS:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{root} is in use by another {what}; wait for it to finish or choose another "
                                  "directory") from None
        _HELD_LOCKS[key] = _HELD_LOCKS.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
            if not _HELD_LOCKS[key]:
                del _HELD_LOCKS[key]
    finally:
        os.close(fd)  # the flock goes with the last descriptor of its open file: held ones stay open above


def refuse_finished_without_checkpoint(paths: RunPaths) -> None:
    """A finished run (summary.json) whose checkpoints are gone, deleted to save space, would be trained again
    from scratch in place, its metrics, events and summary overwritten: refused (exit 3)."""
    if (paths.summary.exists() or paths.summary.is_symlink()) and not any(paths.checkpoints.glob("*.pt")):
        raise DataError(f"{paths.summary}: the run finished, but {paths.checkpoints} holds no checkpoint to resume "
                        f"from; nin does not train over a finished run: train into a new hydra.run.dir, or move "
                        f"{paths.root} away to start over")


def remove_stale_temps(paths: RunPaths) -> list[Path]:
    """Temp files a killed process left behind (checkpoint and JSON writes). Safe under `run_dir_lock`: no live
    writer can own them."""
    stale = [*paths.checkpoints.glob(".*.tmp.*"), *paths.root.glob(".*.tmp"), *paths.tb.glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _keep_event(record: bytes, last_step: int) -> bool:
    from tensorboard.compat.proto.event_pb2 import Event

    try:
        event = Event.FromString(record)
    except Exception:  # noqa: BLE001 - a record whose CRC holds but whose bytes are no event: drop it
        return False
    tags = [v.tag for v in event.summary.value]
    if any(t.startswith(("_hparams_/", "hparam/")) for t in tags):
        return False  # the run writes its hparams record again at its end
    if event.step == last_step and any(t.startswith("class_maps/") for t in tags):
        return False  # likewise its final class maps, when the checkpoint is the run's last
    return event.step <= last_step


def truncate_events(tb: Path, last_step: int) -> None:
    """On resume: drop from every TensorBoard event file what a crashed attempt logged after the checkpoint's
    step, a record cut short, and the hparams record (the run writes it again at its end). Each file is rewritten
    atomically; readers then see each step once, whatever order they read the files in."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.summary.writer.record_writer import RecordWriter


    files = []
    for path in sorted(tb.glob("events.out.tfevents.*")):  # every file read before any is rewritten
        try:  # the loader stops at the first damaged record (bad CRC, cut short): the records before it are kept
            files.append((path, list(RawEventFileLoader(str(path)).Load()), path.stat().st_size))
        except Exception as err:  # noqa: BLE001 - whatever the reader trips on: name the file, never a traceback
            why = one_line(err, 120) or type(err).__name__
            raise DataError(f"{path}: unreadable TensorBoard event file ({why}); move it away to resume this "
                            "run") from None
    for path, records, size in files:
        kept = [r for r in records if _keep_event(r, last_step)]
        if len(kept) == len(records) and sum(len(r) + 16 for r in records) == size:
            continue  # 16: a record's length, its CRC and the data's CRC
        if sum(len(r) + 16 for r in records) != size:
            log.warning("%s: kept the %d complete records before the damaged or cut-short end", path, len(records))
        def write(f, kept=kept) -> None:
            writer = RecordWriter(f)
            for record in kept:
                writer.write(record)

        try:
            atomic_write(path, write, fsync=True)
        except OSError as err:
            raise DataError(f"{path}: cannot rewrite it ({err.strerror or err})") from None


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def _override_values(overrides: list[str]) -> dict[str, Any]:
    """key → parsed value, through Hydra's own grammar (quotes, escapes); {} when it does not parse (compose will
    report that)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except (HydraException, RecursionError):
        return {}
    return {o.key_or_group: o.value() for o in parsed}


def _run_overrides(run_dir: Path) -> list[str]:
    """The overrides a run was started with (Hydra's .hydra/overrides.yaml), checked as untrusted input (see
    `overrides.check_replayed_overrides`); [] when the run has no such file (a checkpoint's own folder)."""


    path = run_dir / ".hydra" / "overrides.yaml"
    refuse_unsafe_tree(run_dir)  # before reading it: a link in it is refused as a whole (exit 4)
    try:
        items = read_yaml(path, expect=None)
    except FileNotFoundError:
        return []
    except DataError as err:
        raise DataError(f"{err}; repair or remove it to resume this run") from None
    return check_replayed_overrides([] if items is None else items, path)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a folder on the way that cannot be searched: load_checkpoint names the problem
        return True


def _resume_file(path: Path, overrides: list[str]) -> tuple[Path | None, list[str]]:
    """`resume=CKPT`: the checkpoint goes through the safe loader first (damaged: exit 3, unsafe: exit 4), before
    any data is read or a run directory made. In RUN/checkpoints/ of a run with its overrides: (RUN, overrides),
    RUN's to be replayed; a checkpoint on its own: (None, the config it stores as overrides (checked as untrusted
    input, see `overrides.stored_config_overrides`) under the command line's)."""
    from nin_cli.checkpoint import load_checkpoint  # torch: resume only

    record = load_checkpoint(path)
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    if run is not None and _is_file(run / ".hydra" / "overrides.yaml"):
        return run, overrides
    given = {_override_key(o) for o in overrides}  # a key replaces its own; a group option (model=...) its group
    stored = stored_config_overrides(record.get("config"), path)
    return None, [o for o in stored if _override_key(o) not in given and o.split(".")[0] not in given] + overrides


def resume_overrides(overrides: list[str]) -> list[str]:
    """The overrides that continue a run. With `resume=DIR`, or `hydra.run.dir=DIR` naming an existing run, DIR's
    own overrides come first and the command line's replace those with the same key: `nin train
    hydra.run.dir=DIR` continues DIR with the config it was started with. `resume=CKPT` continues from a checkpoint
    file in a new run directory, replaying the overrides of the run it came from if it sits in one, else with the
    config the checkpoint stores; a group option on the command line (model=nin_small) replaces that group's stored
    values, a key replaces its own."""

    values = _override_values(overrides)
    resume, run_dir = values.get("resume"), values.get("hydra.run.dir")
    if "hydra.run.dir" in values and (not run_dir or run_dir == "???"):
        raise ConfigError("hydra.run.dir is empty: give the run directory, e.g. hydra.run.dir=outputs/mine")
    if resume == "???":
        resume = None  # the schema check answers "resume is missing (???)"
    source, keep_run_dir = (Path(run_dir) if isinstance(run_dir, str) else None), True
    if isinstance(resume, str):
        target = Path(resume).expanduser()
        if _is_file(target):
            source, overrides = _resume_file(target, overrides)
            if source is None:  # a checkpoint on its own: its stored config, the command line's on top
                return overrides
            keep_run_dir = False
        elif target.is_dir():
            if not any((target / "checkpoints").glob("*.pt")):
                raise ConfigError(f"resume={resume}: no checkpoint in {target / 'checkpoints'} to continue from")
            if run_dir is not None and Path(str(run_dir)).resolve() != target.resolve():
                raise ConfigError(f"resume={resume} and hydra.run.dir={run_dir} name different runs; give one")
            source, overrides = target, [*overrides, f"hydra.run.dir={target}"] if run_dir is None else overrides
        else:
            raise ConfigError(f"resume={resume}: no such run directory or checkpoint file")
    if source is None:
        return overrides
    given = {_override_key(o) for o in overrides}
    dropped = given if keep_run_dir else given | {"resume", "hydra.run.dir"}
    return [o for o in _run_overrides(source) if _override_key(o) not in dropped] + overrides


def progress_mode(setting: str) -> str:
    if setting != "auto":
        return setting
    return "rich" if sys.stderr.isatty() else "plain"


@contextmanager
def epoch_progress(mode: str, total: int, description: str):
    """A transient rich bar on a terminal; nothing otherwise (plain mode logs one line per epoch instead).
    Yields `advance(n_steps, text)`."""
    if mode != "rich":
        yield lambda n=1, text="": None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[text]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, text="")
        yield lambda n=1, text="": progress.update(task, advance=n, text=text)
