"""Checkpoints that describe themselves, are written atomically, and load without running code.

A checkpoint is a plain `torch.save` archive (loadable with `torch.load(weights_only=True)`) holding a dict:
format name and version, the resolved config, model/optimizer state, training state, RNG states, the data's
classes and preprocessing constants, and `sha256`: a hash over every tensor and value in it, checked on load.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from nin_cli.errors import DataError, UnsafeFileError

FORMAT = "nin-checkpoint"
VERSION = 1


def content_hash(obj: Any) -> str:
    """sha256 over a nested structure of tensors and plain values, independent of pickling details."""
    digest = hashlib.sha256()

    def visit(node: Any, path: str) -> None:
        if isinstance(node, torch.Tensor):
            tensor = node.detach().cpu().contiguous()
            digest.update(f"{path}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(node, dict):
            for key in sorted(node, key=str):
                visit(node[key], f"{path}/{key}")
        elif isinstance(node, list | tuple):
            for i, item in enumerate(node):
                visit(item, f"{path}[{i}]")
        else:
            digest.update(f"{path}={node!r}".encode())

    visit(obj, "")
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, payload: dict) -> str:
    """Write `payload` to `path` atomically: temp file in the same directory, fsync, verify, rename, fsync dir.

    The previous file at `path` stays intact until the new one is complete. Returns the content hash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "version": VERSION, **payload}
    record["sha256"] = content_hash(record)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        load_checkpoint(tmp)  # verify what reached the disk before it replaces anything
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"no space left on the device writing {path}; the previous checkpoint is intact") from None
        raise DataError(f"could not write checkpoint {path}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return record["sha256"]


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely: weights_only always, format and content hash checked.

    Raises DataError (exit 3) for a missing, truncated, corrupt or foreign file, UnsafeFileError (exit 4) for a
    file that would need code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file, not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise DataError(f"{path}: a git-LFS pointer, not the checkpoint; run `git lfs pull` to fetch it")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a checkpoint (not a PyTorch archive; truncated or another kind of file)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path}: corrupt archive ({err})") from None
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise UnsafeFileError(f"{path}: a TorchScript program, not a checkpoint; refused (it would run code)")
    if not any(n.endswith("data.pkl") for n in names):
        raise DataError(f"{path}: a zip archive but not a PyTorch checkpoint")
    saved_env = os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # never let the env unlock pickle
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).splitlines()[0] if str(err) else "it needs code to load"
        if "Weights only load failed" in str(err) or "Unsupported" in str(err):
            raise UnsafeFileError(f"{path}: refused, loading it would execute code ({_short(err)})") from None
        raise DataError(f"{path}: corrupt checkpoint ({reason})") from None
    except Exception as err:  # noqa: BLE001 - any failure to parse means a corrupt file
        raise DataError(f"{path}: corrupt or truncated checkpoint ({_short(err)})") from None
    finally:
        if saved_env is not None:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = saved_env
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{path}: a PyTorch file but not a nin checkpoint (no '{FORMAT}' header)")
    if record.get("version") != VERSION:
        raise DataError(f"{path}: checkpoint format version {record.get('version')}, this nin reads {VERSION}")
    expected = record.pop("sha256", None)
    if expected != content_hash(record):
        raise DataError(f"{path}: integrity check failed (content hash mismatch): the file is corrupt")
    record["sha256"] = expected
    return record


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:160] + ("…" if len(text) > 160 else "")
