"""Checkpoints that describe themselves, are written atomically, and load without running code.

A checkpoint is a plain `torch.save` archive (loadable with `torch.load(weights_only=True)`) holding a dict:
format name and version, the resolved config, model/optimizer state, training state, RNG states, the data's
classes and preprocessing constants, and `sha256`: a hash over every tensor and value in it. The zip's end
comment carries a second seal, `nin-sha256:<hex>` over every byte before the hex, so any changed byte — also one
in zip metadata no reader checks — is caught before the file is unpickled.

`load_checkpoint` is the one way any command reads a checkpoint; `load_trained` adds the model on top of it.
Checks, cheapest and safest first, all before torch allocates or unpickles anything: size and kind of file
from its first bytes (empty, git-LFS pointer, HTML, safetensors, raw pickle, not a zip: such a file is never read
past its first MiB, and at most 16 raw pickles are scanned) → the zip's end record, entry count (≤ 10,000) and
directory size → archive kind (TorchScript, torch.export program, plain zip) → declared entry sizes against the
file's and the pickle's size (≤ 16 MiB), all from the directory before the whole file is read → CRC of every entry
→ every global the pickle imports against an allow-list (no code runs: opcodes are only read) → the byte seal →
`torch.load` with weights_only=True (whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says) → format, version and content
hash. `load_trained` adds: no NaN or inf in the weights, and a stored config that rebuilds the stored weights.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import pickletools
import re
import stat
import struct
import zipfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from nin_cli.errors import DataError, UnsafeFileError
from nin_cli.faults import inject
from nin_cli.files import one_line

FORMAT = "nin-checkpoint"
VERSION = 1
SEAL_TAG = b"nin-sha256:"
SEAL_LEN = len(SEAL_TAG) + 64
MAX_BYTES = 4 << 30  # far above any NIN (the ImageNet one with optimizer state is ~0.1 GB)
EOCD = b"PK\x05\x06"
HEAD_BYTES = 1 << 20  # what is read of a file that does not start as a zip: its kind shows in its first bytes
MAX_RAW_PICKLES = 16  # a legacy torch file is five pickles, then raw bytes
MAX_ENTRIES = 10_000  # a nin checkpoint's archive holds about a hundred (one per tensor storage)
MAX_DIRECTORY_BYTES = 4 << 20  # the zip's central directory: ~100 bytes per entry
MAX_PICKLE_BYTES = 16 << 20  # data.pkl: the tensors are other entries, so it is tens of kB (scanned ~10 MB/s)
# Everything a nin checkpoint's pickle may import; tensors' storage types are matched by SAFE_STORAGE.
SAFE_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "_codecs.encode", "builtins.set", "builtins.frozenset", "__builtin__.set", "__builtin__.frozenset",
                "torch.Size", "torch.device"}
SAFE_STORAGE = re.compile(r"torch\.(\w+Storage|float\d*|bfloat16|half|double|u?int\d*|long|short|bool|complex\d*)")


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


def sealed_bytes(record: dict) -> bytes:
    """`torch.save(record)` with the byte seal as the zip's end comment (zip readers, torch included, skip it)."""
    buffer = io.BytesIO()
    torch.save(record, buffer)
    data = buffer.getvalue()
    if data[-22:-18] != EOCD or data[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote an archive without a plain end record; cannot seal it")
    data = data[:-2] + SEAL_LEN.to_bytes(2, "little") + SEAL_TAG
    return data + hashlib.sha256(data).hexdigest().encode()


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
    step = payload.get("state", {}).get("step", -1)  # names the save for fault injection (tests only)
    try:
        with open(tmp, "wb") as f:
            data = sealed_bytes(record)
            f.write(data[:len(data) // 2])
            f.flush()
            inject("mid_write", step)
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
        load_checkpoint(tmp)  # verify what reached the disk before it replaces anything
        inject("before_rename", step)
        os.replace(tmp, path)
        inject("after_rename", step)
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


# ------------------------------------------------------------------------------------------------ loading


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely (see the module docstring for the order of checks).

    Raises DataError (exit 3) for a missing, truncated, corrupt or foreign file, UnsafeFileError (exit 4) for a
    file that would need code to load. The file is read once; every check runs on those same bytes.
    """
    path = Path(path)
    data = _read_bounded(path)
    archive = _open_archive(path, data)
    with archive:
        pickle_name = _classify_archive(path, archive.namelist())
        _check_declared_sizes(path, archive, len(data))
        _check_pickle_size(path, archive.getinfo(pickle_name))
        _check_crc(path, archive)
        _check_globals(path, archive.read(pickle_name))
    _check_seal(path, data)
    return _check_record(path, _torch_load(path, data))


def _open_archive(path: Path, data: bytes | BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Exception as err:  # noqa: BLE001 - whatever the zip reader trips on (also NotImplementedError) is damage
        raise DataError(f"{path}: corrupt or truncated archive ({one_line(err, 160)})") from None


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, after what can be refused without reading them all: its kind from its first bytes (a
    file that is not a zip is never read past HEAD_BYTES), then the zip's end record, entry count and directory,
    the entries' names and declared sizes and the pickle's size (read from the directory alone)."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path}: no such checkpoint file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file, not a checkpoint")
    size = info.st_size
    if size == 0:
        raise DataError(f"{path}: empty file, not a checkpoint")
    if size > MAX_BYTES:
        raise DataError(f"{path}: {size / 2**30:.1f} GiB, too large for a nin checkpoint (limit "
                        f"{MAX_BYTES / 2**30:.0f} GiB); refused before reading it")
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            if not head.startswith(b"PK\x03\x04"):
                _refuse_other_kinds(path, head, size)
            f.seek(max(0, size - (65536 + 22 + 20 + 56)))  # the end record, its comment, the zip64 records
            _check_directory(path, f.read())
            f.seek(0)
            with _open_archive(path, f) as archive:  # reads the central directory only
                name = _classify_archive(path, archive.namelist())
                _check_declared_sizes(path, archive, size)
                _check_pickle_size(path, archive.getinfo(name))
            f.seek(0)
            return f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None


def _refuse_other_kinds(path: Path, head: bytes, size: int) -> None:
    """Name the common wrong files by their first bytes (`head`, the first HEAD_BYTES of a file of `size`
    bytes that does not start as a zip); anything else is 'not a checkpoint'. Always raises."""
    start = head[:512].lstrip()
    if start.startswith(b"version https://git-lfs"):
        raise DataError(f"{path}: a git-LFS pointer, not the checkpoint; run `git lfs pull` to fetch it")
    if start[:15].lower().startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        raise DataError(f"{path}: an HTML/XML page, not a checkpoint (a failed download? fetch the file itself)")
    if len(head) > 8 and head[8:10] in (b'{"', b"{ ") and int.from_bytes(head[:8], "little") < size:
        raise DataError(f"{path}: a safetensors file (weights only, no config), not a nin checkpoint")
    imports = _raw_pickle_globals(head, complete=len(head) == size)
    if imports is not None:
        _refuse_unsafe(path, imports)  # exit 4 when it would import code; nothing is unpickled
    if imports is not None and head[:1] == b"\x80":
        raise DataError(f"{path}: a raw pickle or legacy torch file, not a nin checkpoint (nin writes zip "
                        "archives)")
    raise DataError(f"{path}: not a checkpoint (not a PyTorch archive: another kind of file)")


def _check_directory(path: Path, tail: bytes) -> None:
    """The zip's end record (and zip64 record) from the file's `tail`: there at all, and an entry count and
    central directory small enough that reading them costs nothing (a nin checkpoint has ~100 entries)."""
    at = tail.rfind(EOCD)
    if at < 0 or len(tail) - at < 22:
        raise DataError(f"{path}: truncated PyTorch archive (its end record is missing): the file is incomplete")
    entries, directory = struct.unpack("<HI", tail[at + 10:at + 16])
    locator = at - 20
    record = locator - 56  # zip64: its end record, then its locator, just before the plain end record
    if record >= 0 and tail[locator:locator + 4] == b"PK\x06\x07" and tail[record:record + 4] == b"PK\x06\x06":
        entries64, directory64 = struct.unpack("<QQ", tail[record + 32:record + 48])
        entries, directory = max(entries, entries64), max(directory, directory64)
    if entries > MAX_ENTRIES or directory > MAX_DIRECTORY_BYTES:
        raise DataError(f"{path}: an archive of {entries:,} entries ({directory:,} bytes of directory), far more "
                        f"than a nin checkpoint holds (at most {MAX_ENTRIES:,}); refused before reading it")


def _check_pickle_size(path: Path, info: zipfile.ZipInfo) -> None:
    if info.file_size > MAX_PICKLE_BYTES:
        raise DataError(f"{path}: its pickle {info.filename!r} is {info.file_size:,} bytes, far more than a nin "
                        f"checkpoint's (at most {MAX_PICKLE_BYTES:,}); refused before reading it")


def _check_declared_sizes(path: Path, archive: zipfile.ZipFile, total: int) -> None:
    """torch allocates each entry's declared size before reading it: refuse sizes the file cannot hold."""
    declared = 0
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise DataError(f"{path}: entry {info.filename!r} is compressed; PyTorch archives store entries as is")
        if info.header_offset + info.file_size > total:
            raise DataError(f"{path}: entry {info.filename!r} declares {info.file_size:,} bytes at offset "
                            f"{info.header_offset:,}, beyond the file's {total:,} bytes (truncated or forged)")
        declared += info.file_size
    if declared > total:
        raise DataError(f"{path}: entries declare {declared:,} bytes in all, more than the file's {total:,}")


def _classify_archive(path: Path, names: list[str]) -> str:
    """The archive's pickle entry, after refusing TorchScript, torch.export programs and other zips."""
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise UnsafeFileError(f"{path}: a TorchScript program, not a checkpoint; refused (it would run code)")
    if any(n.endswith(("/models/model.json", "serialized_exported_program.json")) for n in names):
        raise DataError(f"{path}: a torch.export program (.pt2), not a checkpoint; use `torch.export.load`")
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise DataError(f"{path}: a zip archive but not a PyTorch checkpoint (no single data.pkl)")
    return pickles[0]


def _check_crc(path: Path, archive: zipfile.ZipFile) -> None:
    try:
        bad = archive.testzip()
    except Exception as err:  # noqa: BLE001 - as in load_checkpoint
        raise DataError(f"{path}: corrupt archive ({one_line(err, 160)})") from None
    if bad is not None:
        raise DataError(f"{path}: corrupt archive: entry {bad!r} fails its CRC check (the file was damaged)")


def pickle_globals(data: bytes | BinaryIO, found: list[str] | None = None) -> list[str]:
    """Every 'module.name' a pickle imports, read from its opcodes without running any of them (appended to
    `found` as they are read, so a caller keeps those before a malformed or cut-off opcode).

    STACK_GLOBAL takes its names from the two strings pushed before it; when those are not plain string opcodes
    the import cannot be read, which the caller treats as unsafe. Raises ValueError on a malformed pickle.
    """
    found = [] if found is None else found
    strings: deque[str | None] = deque(maxlen=2)  # the last two values pushed, when they are strings
    memo: dict[Any, str | None] = {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", ".", 1))
        elif op.name == "STACK_GLOBAL":
            module, name = tuple(strings) if len(strings) == 2 else (None, None)
            found.append(f"{module}.{name}" if module and name else "<an import the scanner cannot read>")
        elif op.name in ("EXT1", "EXT2", "EXT4"):
            found.append(f"<copyreg extension {arg}>")
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                       "SHORT_BINSTRING"):
            strings.append(str(arg))
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(arg))
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = strings[-1] if strings else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif op.name not in ("PROTO", "FRAME"):
            strings.append(None)
    return found


def _raw_pickle_globals(data: bytes, complete: bool = True) -> list[str] | None:
    """Imports of the pickles at the start of a non-zip file (legacy torch files are several in a row, then raw
    bytes), at most MAX_RAW_PICKLES of them; None when the file does not even start with a pickle. `data` may be
    only the file's head (`complete` False): the imports read before its cut are kept."""
    stream, found = io.BytesIO(data), []
    for _ in range(MAX_RAW_PICKLES):
        if stream.tell() >= len(data):
            break
        start, partial = stream.tell(), []
        try:
            pickle_globals(stream, partial)
        except Exception:  # noqa: BLE001 - the end of the pickles, or no pickle at all
            if not complete and stream.tell() >= len(data) - 16:  # a pickle cut off by the head's end
                return found + partial
            return found if start else None
        found += partial
    return found


def _check_globals(path: Path, data: bytes) -> None:
    try:
        imports = pickle_globals(data)
    except Exception as err:  # noqa: BLE001 - any opcode the reader cannot parse means a damaged pickle
        raise DataError(f"{path}: corrupt checkpoint (its pickle does not parse: {one_line(err, 160)})") from None
    _refuse_unsafe(path, imports)


def _refuse_unsafe(path: Path, imports: list[str]) -> None:
    unsafe = sorted({g for g in imports if g not in SAFE_GLOBALS and not SAFE_STORAGE.fullmatch(g)})
    if unsafe:
        shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
        raise UnsafeFileError(f"{path}: refused, loading it would execute code (it imports {shown}); "
                              "nothing was run")


def _check_seal(path: Path, data: bytes) -> None:
    if data[-SEAL_LEN:-64] != SEAL_TAG or data[-SEAL_LEN - 22:-SEAL_LEN - 18] != EOCD:
        raise DataError(f"{path}: a PyTorch file without nin's integrity seal: not a nin checkpoint, or it was "
                        "rewritten by another tool")
    if hashlib.sha256(data[:-64]).hexdigest().encode() != data[-64:]:
        raise DataError(f"{path}: integrity check failed (file hash mismatch): the file is corrupt")


@contextmanager
def _no_unsafe_override() -> Iterator[None]:
    """torch honours an explicit weights_only=True over this variable; removing it also spares torch's error
    when both FORCE variables are set. Defence in depth only: the global allow-list has already run."""
    saved = os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = saved


def _torch_load(path: Path, data: bytes) -> Any:
    try:
        with _no_unsafe_override():
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as err:
        # torch raises this one type both for what its weights-only unpickler refuses and for broken bytes, and
        # says which only in its text (no subclass to catch); the import scan (step 5) refused unsafe globals first
        if "Weights only load failed" in str(err) or "Unsupported" in str(err):
            raise UnsafeFileError(f"{path}: refused, loading it would execute code ({one_line(err, 160)})") from None
        raise DataError(f"{path}: corrupt checkpoint ({one_line(err, 160)})") from None
    except Exception as err:  # noqa: BLE001 - any other failure to parse means a corrupt file
        raise DataError(f"{path}: corrupt or truncated checkpoint ({one_line(err, 160)})") from None


def _check_record(path: Path, record: Any) -> dict:
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{path}: a PyTorch file but not a nin checkpoint (no '{FORMAT}' header)")
    if record.get("version") != VERSION:
        raise DataError(f"{path}: checkpoint format version {record.get('version')}, this nin reads {VERSION}")
    expected = record.pop("sha256", None)
    if expected != content_hash(record):
        raise DataError(f"{path}: integrity check failed (content hash mismatch): the file is corrupt")
    record["sha256"] = expected
    return record
