"""synth.files: atomic writes that never leave a truncated file, and file hashes."""

from __future__ import annotations

import hashlib
import stat

import numpy as np
import pytest

from synth.files import atomic_savez, atomic_write, atomic_write_text, file_sha256, remove_stale


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "a.bin"
    assert atomic_write(path, lambda f: f.write(b"first")) == path
    atomic_write(path, lambda f: f.write(b"second, longer"))
    assert path.read_bytes() == b"second, longer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]       # no temp file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "keep.txt"
    atomic_write_text(path, "old contents")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_keyboard_interrupt_mid_write_also_cleans_up(tmp_path):
    path = tmp_path / "x.npz"

    def interrupted(f):
        f.write(b"PK")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_permissions_follow_the_umask_not_mkstemp(tmp_path):
    from synth.files import plain_mode

    plain = tmp_path / "plain.txt"
    with open(plain, "w"):
        pass
    want = stat.S_IMODE(plain.stat().st_mode)           # what open() gives under this umask
    assert plain_mode() == want
    path = atomic_write_text(tmp_path / "p.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == want
    assert want != 0o600                    # mkstemp's own mode would be a private file


def test_written_audio_gets_the_plain_mode_too(tmp_path):
    from synth.audio_writer import write_audio
    from synth.files import plain_mode

    path = write_audio(tmp_path / "hit.wav", np.zeros(100), 48000.0)
    assert stat.S_IMODE(path.stat().st_mode) == plain_mode()


def test_text_is_utf8(tmp_path):
    path = atomic_write_text(tmp_path / "t.txt", "Grosse Caisse \u00e0 \u266a")
    assert path.read_bytes() == "Grosse Caisse \u00e0 \u266a".encode("utf-8")


def test_savez_keeps_the_exact_name_and_the_arrays(tmp_path):
    path = atomic_savez(tmp_path / "metric-train.npz.part", a=np.arange(5), b=np.eye(2))
    assert path.name == "metric-train.npz.part" and path.exists()       # numpy would add .npz
    with np.load(path) as d:
        np.testing.assert_array_equal(d["a"], np.arange(5))
        np.testing.assert_array_equal(d["b"], np.eye(2))


def test_missing_folder_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "no" / "such" / "dir.txt", "x")


def test_remove_stale_removes_only_that_files_temps(tmp_path):
    for name in (".a.bin.x1.tmp", ".a.bin.x2.tmp", ".b.bin.x1.tmp", "a.bin"):
        (tmp_path / name).write_bytes(b"")
    remove_stale(tmp_path / "a.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.bin.x1.tmp", "a.bin"]


def test_sha256_matches_hashlib_across_block_boundaries(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (1 << 20) + 12345, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()
