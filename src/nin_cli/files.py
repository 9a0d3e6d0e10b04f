"""How every module touches a file: a message on one line; a file written whole or not at all, never through a
link; a log appended to without following a link; a file read back bounded, regular and UTF-8; a directory someone
else made checked for links and special files before anything is written in it. Above `errors` only.

Why: a run or sweep directory may come from a colleague (untrusted, README "Reliability"). A link inside it named
summary.csv or train.log would make a plain `open(path, "w")` write into any file the user can write."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from nin_cli.errors import ConfigError, DataError, UnsafeFileError

MAX_STATE_FILE = 64 * 1024 * 1024  # a run directory's JSON/YAML/text state files; metrics of 100k epochs fit
MAX_DEPTH = 32  # JSON/YAML nesting nin's own files never exceed


def one_line(value: object, limit: int | None = None) -> str:
    """Any message (an exception's included: its text, else its type's name) on one line, cut at `limit` chars."""
    text = " ".join(str(value).split()) or (type(value).__name__ if isinstance(value, BaseException) else "")
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def atomic_write(path: Path, content: bytes | str | Callable[[BinaryIO], object], fsync: bool = False) -> None:
    """Write `path` whole or not at all: into a temp file beside it (named for this process, so concurrent writers
    never share one), then a rename over it. A crash leaves the old file; a failure removes the temp file and
    raises. `content` is the bytes, the text, or a function writing into the open binary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # O_EXCL below: a link planted at the temp name is replaced, never followed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def open_append(path: Path) -> BinaryIO:
    """`path` opened for appending (created when missing), refusing a link or anything but a regular file: logs
    (train.log) and append-only records. O_NONBLOCK: a FIFO planted there must not hang the open."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == 40:  # ELOOP: the last component is a symbolic link
            raise UnsafeFileError(f"{path}: a symbolic link; nin never writes through a link in a run directory "
                                  "(remove it)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{path}: not a regular file; nin appends only to plain files (remove it)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


class SafeFileHandler(logging.FileHandler):
    """logging's FileHandler (Hydra's job logging: train.log) that never follows a link or opens a FIFO."""

    def _open(self):
        import io

        return io.TextIOWrapper(open_append(Path(self.baseFilename)), encoding=self.encoding or "utf-8",
                                errors=self.errors, write_through=True)


def unsafe_entry(root: Path) -> str | None:
    """The first symbolic link or special file (FIFO, device, socket) at or under `root`, with what it is; None
    when `root` is missing or a plain tree of folders and regular files. `root` itself may be a link the user
    gave; what it holds may not."""
    root = Path(root)
    if not root.is_dir():
        return None
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    return f"{entry.path} is a symbolic link"
                if stat.S_ISDIR(mode):
                    pending.append(Path(entry.path))
                elif not stat.S_ISREG(mode):
                    return f"{entry.path} is a special file (not a regular file)"
    return None


def is_utf8_path(path: Path) -> bool:
    """Whether the path's name is UTF-8 text (POSIX names are bytes: os.fsdecode keeps other bytes as surrogates)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_utf8_path(path: Path, what: str = "run directory", needs: str = "TensorBoard and Hydra's records") -> None:
    """Exit 2 before anything is written where a library could not name the path (TensorBoard's event files,
    Hydra's YAML, the C++ export runtimes take UTF-8 names only)."""
    path = path.absolute()  # a relative name under a non-UTF-8 working directory is one too
    if not is_utf8_path(path):
        raise ConfigError(f"{os.fsencode(path)!r}: the {what}'s path is not UTF-8 text, which {needs} need; rename "
                          "the folder or choose a UTF-8 path")


def refuse_unsafe_tree(root: Path, what: str = "run directory") -> None:
    """Exit 4 before anything is written in a run or sweep directory holding a link or a special file: nin would
    write through it (Hydra's .hydra/, tb/, checkpoints/) or hang on it."""
    try:
        problem = unsafe_entry(root)
    except OSError as err:
        raise DataError(f"{root}: cannot list the {what} ({err.strerror or err})") from None
    if problem:
        raise UnsafeFileError(f"{problem} inside the {what} {root}; nin writes nothing in a {what} holding links "
                              "or special files (remove them, or use another directory)")


def prepare_output_dir(out: Path, base: Path | None = None, what: str = "output folder") -> Path:
    """Make `out` to write a command's files in (eval, cam): no folder between `base` (the run or checkpoint
    folder it belongs to) and `out` may be a link, and `out` may hold no link or special file (exit 4)."""
    out = Path(out)
    if base is not None:
        for part in (out, *out.parents):
            if part == base or part in base.parents:
                break
            if part.is_symlink():
                raise UnsafeFileError(f"{part} is a symbolic link; nin writes no {what} through a link (remove it)")
    out.mkdir(parents=True, exist_ok=True)
    refuse_unsafe_tree(out, what)
    return out


def read_bytes(path: Path, limit: int = MAX_STATE_FILE) -> bytes:
    """A run-directory file's bytes: a regular file (no link, FIFO or device: /dev/zero would fill memory) of at
    most `limit` bytes; DataError (exit 3) naming the file otherwise. FileNotFoundError passes through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except NotADirectoryError:  # a file on the way (hydra.run.dir=FILE/out): no such file; the caller says why
        raise FileNotFoundError(errno.ENOENT, "not there", str(path)) from None
    except OSError as err:
        why = "a symbolic link" if err.errno == 40 else (err.strerror or str(err))
        raise DataError(f"{path}: cannot read it ({why})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise DataError(f"{path}: {info.st_size} bytes, more than the {limit} a run file may hold")
        return f.read(limit + 1)[:limit]


def read_text(path: Path, limit: int = MAX_STATE_FILE) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(child, level + 1) for child in children), default=level)


def read_json(path: Path, expect: type | None = dict, limit: int = MAX_STATE_FILE) -> Any:
    """A run-directory JSON file, bounded (size, nesting) and of the type `expect`; DataError naming the file."""
    text = read_text(path, limit)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: not valid JSON ({one_line(err, 80)})") from None
    return checked(value, path, expect)


def read_yaml(path: Path, expect: type | None = dict, limit: int = MAX_STATE_FILE) -> Any:
    import yaml

    text = read_text(path, limit)
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        raise DataError(f"{path}: not valid YAML ({one_line(err, 80)})") from None
    return checked(value, path, expect)


def checked(value: Any, path: Path, expect: type | None) -> Any:
    if _depth(value) > MAX_DEPTH:
        raise DataError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if expect is not None and not isinstance(value, expect):
        raise DataError(f"{path}: holds a {type(value).__name__}, not a {expect.__name__}")
    return value


def number(value: Any) -> float | None:
    """A metric read back: a finite int/float (not a bool), else None (a string, NaN, Infinity, a list...)."""
    import math

    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
