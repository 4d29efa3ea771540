"""What the server lets in (``plugin_host.request_guard``); the matcher worker is tested in test_worker."""

from __future__ import annotations

import numpy as np
import pytest
from pedalboard.io import AudioFile

from plugin_host.request_guard import LocalOnly, _host_is_local, audio_kind


@pytest.mark.parametrize("fmt", ["wav", "flac", "aiff", "ogg", "mp3"])
def test_every_readable_format_is_recognized_by_its_bytes(fmt, tmp_path):
    path = tmp_path / f"hit.{fmt}"
    x = (0.5 * np.sin(2 * np.pi * 200 * np.arange(22050) / 44100)).astype(np.float32)
    with AudioFile(str(path), "w", samplerate=44100, num_channels=1) as f:
        f.write(x[None])
    assert audio_kind(path.read_bytes()[:64]) == fmt


@pytest.mark.parametrize("head", [
    b"", b"RIFF", b"hello world, not audio at all",
    b"\x89PNG\r\n\x1a\n" + b"\0" * 8, b"PK\x03\x04" + b"\0" * 12,      # image, zip
    b"\x7fELF" + b"\0" * 12, b"RIFF\0\0\0\0AVI LIST",                  # executable, video
    b"%PDF-1.7\n" + b"\0" * 8, b"\xff\xd8\xff\xe0" + b"\0" * 12,        # pdf, jpeg
])
def test_other_content_is_not_audio(head):
    assert audio_kind(head) is None


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1:8765", True), ("localhost:8765", True), ("LOCALHOST", True),
    ("[::1]:8765", True), ("127.0.0.2:80", True),
    ("evil.example:8765", False), ("127.0.0.1.evil.example", False), ("", False),
    ("10.0.0.5:8765", False), ("[::2]:8765", False), ("localhost.evil:8765", False),
])
def test_only_loopback_hosts_are_local(host, ok):
    assert _host_is_local(host, {"localhost", "127.0.0.1", "[::1]", "::1"}) is ok


@pytest.mark.parametrize("origin,ok", [
    ("http://127.0.0.1:8765", True), ("http://localhost:8765", True),
    ("http://[::1]:8765", True),
    ("http://127.0.0.1:8766", False), ("https://127.0.0.1:8765", False),
    ("http://evil.example:8765", False), ("null", False), ("http://127.0.0.1", False),
])
def test_only_this_servers_origin_is_accepted(origin, ok):
    assert LocalOnly(None, 8765).origin_ok(origin) is ok
