"""The ``tympan`` command: real files, real processes, exit codes, messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pedalboard.io import AudioFile

from matcher.search import Source

REPO = Path(__file__).resolve().parents[1]
HIT = ["--f0", "120", "--tau", "0.3", "--p", "0.01", "--D", "0.02", "--alpha", "0.8"]


def tympan(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tympan_cli", *args], cwd=cwd or REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def read(path: Path) -> tuple[np.ndarray, float]:
    with AudioFile(str(path)) as f:
        return f.read(f.frames), f.samplerate


def test_voice_at_block_65_equals_torch_twin(tmp_path):
    voice, torch_ = tmp_path / "voice.wav", tmp_path / "torch.wav"
    r1 = tympan("synth", "render", *HIT, "--engine", "voice", "--block", "65", "-o", str(voice))
    r2 = tympan("synth", "render", *HIT, "--engine", "torch", "-o", str(torch_))
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr
    a, sr_a = read(voice)
    b, sr_b = read(torch_)
    assert sr_a == sr_b == 48000
    assert a.shape == b.shape == (1, 96000)
    assert np.abs(a - b).max() <= 1e-4
    assert abs(np.abs(a).max() - 1.0) < 1e-4          # peak-normalized
    assert "wrote" in r1.stdout and str(voice) in r1.stdout


@pytest.mark.parametrize("ext, depth", [("flac", "24"), ("aiff", "16"), ("wav", "32"),
                                        ("ogg", "24")])
def test_formats_rates_velocity(tmp_path, ext, depth):
    out = tmp_path / f"hit.{ext}"
    r = tympan("synth", "render", "--preset", "rack_tom", "--sr", "22050", "--seconds", "0.5",
               "--velocity", "0.5", "--bit-depth", depth, "-o", str(out))
    assert r.returncode == 0, r.stderr
    audio, sr = read(out)
    assert sr == 22050 and abs(audio.shape[1] - 11025) <= 2048   # lossy codecs pad
    tol = 0.05 if ext == "ogg" else 1e-3
    assert abs(np.abs(audio).max() - 0.5) < tol


BAD = [
    (["--f0", "2000"], "parameter 'f0' = 2000.0 is out of range; allowed: [40, 1000] Hz"),
    (["--tau", "nan"], "parameter 'tau' = nan is not finite; allowed: [0.07, 0.8] s"),
    (["--alpha", "0"], "parameter 'alpha' = 0.0 is out of range; allowed: (0, 1]"),
    (["--D", "inf"], "parameter 'D' = inf is not finite"),
    (["--p", "abc"], "argument --p: 'abc' is not a number"),
    (["--velocity", "1.5"], "argument --velocity: 1.5 is out of range; allowed [0, 1]"),
    (["--seconds", "-1"], "argument --seconds: -1 is out of range"),
    (["--sr", "100"], "argument --sr: 100 is out of range; allowed [8000, 384000] Hz"),
    (["--engine", "gpu"], "argument --engine: invalid choice: 'gpu'"),
]


@pytest.mark.parametrize("override, message", BAD)
def test_bad_input_exits_2_with_message_and_no_traceback(tmp_path, override, message):
    out = tmp_path / "x.wav"
    r = tympan("synth", "render", "--preset", "kick", *override, "-o", str(out))
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_missing_parameters_are_named(tmp_path):
    r = tympan("synth", "render", "--tau", "0.3", "-o", str(tmp_path / "x.wav"))
    assert r.returncode == 2
    assert "missing --f0, --p, --D, --alpha" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("target, message", [
    ("nowhere/x.wav", "does not exist"),
    ("x.xyz", "unknown extension '.xyz'; allowed: .wav"),
    ("x.flac --bit-depth 32", "bit depth 32 is not available for .flac; allowed: 16, 24"),
])
def test_bad_output_paths(tmp_path, target, message):
    name, *extra = target.split()
    r = tympan("synth", "render", "--preset", "kick", *extra, "-o", str(tmp_path / name))
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []            # no partial or temporary file


def test_failed_write_keeps_the_existing_file(tmp_path):
    from synth.audio_writer import AudioWriteError, write_audio

    out = tmp_path / "keep.wav"
    write_audio(out, np.zeros(100), 48000)
    before = out.read_bytes()
    with pytest.raises(AudioWriteError, match="non-finite"):
        write_audio(out, np.array([0.0, np.nan]), 48000)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]


def test_unknown_command_and_help():
    r = tympan("bogus")
    assert r.returncode == 2 and "unknown command 'bogus'; allowed: synth, demo, devices" in r.stderr
    r = tympan("--help")
    assert r.returncode == 0 and "synth" in r.stdout and "demo" in r.stdout
    r = tympan("synth", "render", "--help")
    assert r.returncode == 0 and "range [40, 1000] Hz, log scale" in " ".join(r.stdout.split())


def test_synth_command_does_not_import_torch(tmp_path):
    code = ("import sys, tympan_cli; rc = tympan_cli.main(['synth', 'render', '--preset', 'kick',"
            f" '--seconds', '0.1', '-o', {str(tmp_path / 'k.wav')!r}]);"
            " print('torch' in sys.modules, rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.stdout.strip().endswith("False 0"), r.stdout + r.stderr


# The fundamentals the bundled examples were made at (plugin_host/examples/make_examples.py).
EXAMPLE_F0 = {"kick": 52.0, "snare": 196.0, "tom": 118.0}


@pytest.mark.slow
def test_demo_writes_the_showcase_and_plays_the_matched_examples(tmp_path):
    from plugin_host.demo import EXAMPLE_PADS
    from plugin_host.kit import Kit
    from synth.presets import PRESETS

    out = tmp_path / "demo"
    r = tympan("demo", "-o", str(out))          # the default match: the search
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.iterdir())
    matched = [f"{k}-{n}.{e}" for n in EXAMPLE_PADS
               for k, e in (("example", "flac"), ("matched", "wav"), ("matched", "png"))]
    assert files == sorted([f"{n}.wav" for n in PRESETS] + ["groove.wav", "matched-kit.json"]
                           + matched)
    for name in PRESETS:
        audio, sr = read(out / f"{name}.wav")
        assert sr == 48000 and abs(np.abs(audio).max() - 0.9) < 1e-3
    groove, _ = read(out / "groove.wav")
    assert 0.5 < np.abs(groove).max() <= 0.9 + 1e-4
    kit = Kit.load(out / "matched-kit.json")
    table = r.stdout.split("matching the example hits")[1].splitlines()
    for name, note in EXAMPLE_PADS.items():
        pad = kit.pads[kit.pad_index(note)]
        assert pad.name == f"matched {name}"
        # The printed table and the kit carry the same match.
        row = next(line for line in table if line.startswith(f"{name} "))
        assert float(row.split()[1]) == pytest.approx(pad.params.f0, abs=0.05)
        # The search's winner, and the generator's fundamental within a semitone.
        assert row.split()[9] in tuple(s.value for s in Source if s is not Source.NN), row
        assert abs(12 * np.log2(pad.params.f0 / EXAMPLE_F0[name])) < 1.0, (name, row)
        audio, sr = read(out / f"matched-{name}.wav")
        assert sr == 48000 and 0.5 < np.abs(audio).max() <= 0.9 + 1e-4
        assert (out / f"matched-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in r.stdout and "tympan play --kit" in r.stdout


def test_demo_without_matching_and_bad_options(tmp_path):
    r = tympan("demo", "-o", str(tmp_path / "d"), "--no-match", "--sr", "22050")
    assert r.returncode == 0, r.stderr
    assert not any(p.name.startswith("matched") for p in (tmp_path / "d").iterdir())
    for bad in (["--budget-ms", "-5"], ["--model", str(tmp_path / "none.tympan")],
                ["--sr", "12345"]):
        r = tympan("demo", "-o", str(tmp_path / "e"), *bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr and bad[0] in r.stderr


def test_bundled_examples_are_what_their_generator_makes():
    # The shipped FLACs (24-bit) must stay the deterministic output of make_examples.py.
    sys.path.insert(0, str(REPO / "plugin_host" / "examples"))
    try:
        import make_examples
    finally:
        sys.path.pop(0)
    for name, x in make_examples.examples().items():
        audio, sr = read(REPO / "plugin_host" / "examples" / f"{name}.flac")
        assert sr == make_examples.SR and audio.shape == (1, x.size)    # mono
        np.testing.assert_allclose(audio[0], x, atol=2 ** -22)
