"""The two things every module does with text and files: a message on one line, and a file written whole or not at
all. The lowest layer: it imports nothing of nin's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
        with open(tmp, "wb") as f:
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
