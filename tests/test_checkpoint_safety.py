"""Safe loading: every damaged, foreign or malicious file is refused with one line and the right exit code."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from nin_cli.checkpoint import load_checkpoint, pickle_globals, save_checkpoint, sealed_bytes
from nin_cli.errors import DataError, UnsafeFileError

pytestmark = pytest.mark.usefixtures("one_thread")


class Canary:
    """Unpickling this writes a file: the proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('code ran')",)


@pytest.fixture(scope="module")
def good(tiny_run) -> bytes:
    return (tiny_run / "checkpoints" / "best.pt").read_bytes()


def refused(path: Path, error: type) -> str:
    with pytest.raises(error) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_checkpoint_round_trips_and_is_sealed(tmp_path):
    payload = {"config": {"a": 1}, "model": {"w": torch.arange(6.0)}, "data": {"classes": ["x"]}}
    sha = save_checkpoint(tmp_path / "c.pt", payload)
    record = load_checkpoint(tmp_path / "c.pt")
    assert record["sha256"] == sha and torch.equal(record["model"]["w"], torch.arange(6.0))
    raw = (tmp_path / "c.pt").read_bytes()
    assert raw[-75:-64] == b"nin-sha256:" and zipfile.ZipFile(io.BytesIO(raw)).comment.startswith(b"nin-sha256:")
    assert torch.load(io.BytesIO(raw), weights_only=True)["config"] == {"a": 1}  # still a plain torch archive


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_a_malicious_pickle_never_runs(tmp_path, monkeypatch, force_unsafe):
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    canary = tmp_path / "canary"
    record = {"format": "nin-checkpoint", "version": 1, "config": {}, "model": {}, "evil": Canary(canary)}
    sealed = tmp_path / "sealed.pt"
    sealed.write_bytes(sealed_bytes(record))  # a forged seal does not help: the imports are read first
    plain = tmp_path / "plain.pt"
    torch.save(record, plain)
    legacy = tmp_path / "legacy.pt"
    torch.save(record, legacy, _use_new_zipfile_serialization=False)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(record, protocol=4))
    old = tmp_path / "proto0.pkl"
    old.write_bytes(pickle.dumps(Canary(canary), protocol=0))
    for path in (sealed, plain, legacy, raw, old):
        assert "exec" in refused(path, UnsafeFileError)
    assert not canary.exists()
    # torch's own weights-only unpickler, the second line of defence, refuses it too under the variable
    from nin_cli.checkpoint import _torch_load

    with pytest.raises(UnsafeFileError):
        _torch_load(plain, plain.read_bytes())
    assert not canary.exists()


def test_the_import_scanner_reads_stack_globals_without_running_them():
    assert pickle_globals(pickle.dumps(Canary(Path("x")), protocol=4)) == ["builtins.exec"]
    assert pickle_globals(pickle.dumps(Canary(Path("x")), protocol=2)) == ["__builtin__.exec"]
    assert pickle_globals(pickle.dumps({"a": [1, 2.0, "s"]}, protocol=4)) == []


def test_truncations_at_many_offsets_are_corrupt(tmp_path, good):
    path = tmp_path / "cut.pt"
    offsets = sorted({1, 2, 4, 30, 64, 100, 512, 4096, len(good) - 1, len(good) - 22, len(good) - 64,
                      len(good) - 75, len(good) - 97, *range(1000, len(good), len(good) // 40)})
    for offset in offsets:
        path.write_bytes(good[:offset])
        refused(path, DataError)


def test_bit_flips_anywhere_are_caught(tmp_path, good):
    path = tmp_path / "flip.pt"
    tail = range(len(good) - 400, len(good))  # zip directory, end record and seal
    offsets = sorted({*range(0, 600, 17), *range(600, len(good), len(good) // 30), *tail[::8]})
    for offset in offsets:
        damaged = bytearray(good)
        damaged[offset] ^= 1 << (offset % 8)
        path.write_bytes(bytes(damaged))
        refused(path, DataError)


def test_absurd_declared_sizes_are_refused_before_allocation(tmp_path, good):
    data = bytearray(good)
    entry = data.index(b"PK\x01\x02")  # first central-directory entry: its sizes sit at +20 and +24
    data[entry + 20:entry + 28] = (2**31).to_bytes(4, "little") * 2
    path = tmp_path / "huge.pt"
    path.write_bytes(bytes(data))
    assert "declares" in refused(path, DataError)


def _foreign_files(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    files = {}

    def put(name: str, content: bytes, code: int) -> None:
        files[name] = (tmp_path / name, code)
        (tmp_path / name).write_bytes(content)

    put("empty.pt", b"", 3)
    put("page.pt", b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n", 3)
    put("lfs.pt", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", 3)
    put("random.pt", torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes(), 3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    put("plain.zip", buffer.getvalue(), 3)
    buffer = io.BytesIO()
    torch.save({"weights": torch.ones(3)}, buffer)  # a torch file, but no nin seal or header
    put("foreign.pt", buffer.getvalue(), 3)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), buffer)
    put("script.pt", buffer.getvalue(), 4)
    from safetensors.torch import save

    put("weights.safetensors", save({"w": torch.ones(2)}), 3)
    (tmp_path / "folder.pt").mkdir()
    files["folder.pt"] = (tmp_path / "folder.pt", 3)
    files["missing.pt"] = (tmp_path / "missing.pt", 3)
    return files


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notices
def test_each_non_checkpoint_gets_its_exit_code_and_one_line(nin, tmp_path, good):
    files = _foreign_files(tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 4
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    files.update({"cut.pt": (cut, 3), "flipped.pt": (tmp_path / "flipped.pt", 3)})
    for name, (path, code) in files.items():
        for command in (["eval", path, "--json"], ["export", path, "--format", "safetensors"], ["cam", path, "x.png"]):
            result = nin(*command)
            assert result.code == code, (name, command[0], result.err)
            assert len(result.err_lines) == 1 and result.err.startswith("nin: error: "), (name, result.err)
            assert "Traceback" not in result.err and result.out == ""
