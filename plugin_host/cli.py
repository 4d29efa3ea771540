"""``tympan devices``, ``tympan play``, ``tympan render``: the musician's commands."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

__all__ = ["add_live_options", "devices_main", "play_main", "render_main"]


def devices_main(argv: Sequence[str] | None = None) -> int:
    """List audio output devices and MIDI input ports per API."""
    parser = argparse.ArgumentParser(prog="tympan devices",
                                     description="List audio outputs and MIDI inputs.")
    parser.parse_args(argv)
    from .audio_output import list_devices
    from .midi import list_all

    print("Audio outputs:")
    devices = list_devices()
    for d in devices:
        print(f"  [{d['index']}] {d['name']}  ({d['api']}, {d['channels']} ch, "
              f"{d['samplerate']:g} Hz)")
    if not devices:
        print("  (none: no sound card, and no JACK server running)")
    print("MIDI inputs:")
    for api, ports in list_all().items():
        if isinstance(ports, str):
            print(f"  {api}: unavailable: {ports}")
        elif not ports:
            print(f"  {api}: no ports (use --midi-in virtual to create one)")
        else:
            for i, name in enumerate(ports):
                print(f"  {api} [{i}] {name}")
    return 0


def add_live_options(parser: argparse.ArgumentParser, blocksize: int,
                     midi_none: bool = False) -> None:
    """The audio and MIDI options of the live commands (``tympan play``, ``tympan serve``).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    blocksize : int
        Default frames per audio block.
    midi_none : bool
        Also accept ``--midi-in none`` (no MIDI input).
    """
    parser.add_argument("--midi-api", metavar="API",
                        help="MIDI system: jack, alsa, coremidi, winmm (default: JACK if a "
                             "server runs, else the platform's)")
    parser.add_argument("--rtmidi", action="store_true",
                        help="on JACK, read MIDI through python-rtmidi (events placed to "
                             "within one JACK period) instead of the sample-accurate "
                             "JACK-Client input")
    parser.add_argument("--midi-in", default="virtual",
                        metavar="NAME|INDEX|virtual" + ("|none" if midi_none else ""),
                        help="input port by name, substring or index, or 'virtual' to "
                             "create a port others connect to (default)"
                             + ("; 'none' for no MIDI input" if midi_none else ""))
    parser.add_argument("--audio-device", metavar="NAME", help="output device (name or index)")
    parser.add_argument("--sr", type=int, default=48000, help="sample rate in Hz (default 48000)")
    parser.add_argument("--blocksize", type=int, default=blocksize,
                        help=f"frames per audio block (default {blocksize})")
    parser.add_argument("--polyphony", type=int, default=64, help="voices (default 64)")
    parser.add_argument("--no-effects", action="store_true", help="bypass the effects chain")


def play_main(argv: Sequence[str] | None = None) -> int:
    """Play the kit live from MIDI until interrupted."""
    parser = argparse.ArgumentParser(prog="tympan play",
                                     description="Play a kit live: MIDI in, audio out.")
    parser.add_argument("--kit", metavar="FILE", help="kit file (default: the General MIDI kit)")
    add_live_options(parser, blocksize=128)
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--quiet", action="store_true", help="no status line")
    args = parser.parse_args(argv)
    if not 16 <= args.blocksize <= 8192:
        parser.exit(2, f"tympan play: error: --blocksize {args.blocksize}: allowed 16..8192\n")

    import rtmidi

    from .audio_output import AudioOutput
    from .engine import Engine
    from .jack_midi import JackMidiInput, jack_client_available
    from .kit import load_kit
    from .midi import MidiInput, resolve_api
    from .signals import StopSignals

    kit = load_kit(args.kit)
    api = resolve_api(args.midi_api)
    native_jack = (api == rtmidi.API_UNIX_JACK and not args.rtmidi
                   and jack_client_available())
    # max_block = the stream's block: the effects chain primes and resets at
    # that size (a reset is on the callback's error path, so keep it small).
    engine = Engine(kit, float(args.sr), polyphony=args.polyphony,
                    effects=not args.no_effects, max_block=args.blocksize)
    device = int(args.audio_device) if args.audio_device and args.audio_device.isdigit() \
        else args.audio_device
    output = AudioOutput(engine, device=device, blocksize=args.blocksize)

    def on_message(data, t: float) -> None:
        engine.midi(data, engine.frame_at(t))

    midi = JackMidiInput(args.midi_in, on_message) if native_jack \
        else MidiInput(api, args.midi_in, on_message)
    if native_jack:
        engine.block_clock, engine.clock_wrap = midi.cycle_start, midi.wrap_seconds
    output.start()
    lost = False
    with StopSignals("tympan play") as stop:
        try:
            print(f"playing {kit.name!r}: {len(kit.pads)} pads, MIDI in {midi.port_name!r}, "
                  f"{args.sr} Hz, {args.blocksize}-frame blocks, output latency "
                  f"{output.total_latency * 1000:.1f} ms (device {output.latency * 1000:.1f} ms "
                  f"+ effects {output.effects_latency_frames} frames). Ctrl-C to stop.",
                  flush=True)
            deadline = None if args.seconds is None else time.monotonic() + args.seconds
            while not stop.wait(0.25):
                if not output.running:
                    lost = True
                    break
                if not args.quiet:
                    stats = output.callback_stats(last=1024)
                    sys.stdout.write(
                        f"\rvoices {engine.active_voices:3d}  cpu {output.cpu_load * 100:5.1f}%  "
                        f"callback p99 {stats['p99_us']:7.1f} us  underflows {output.underflows}"
                        f"  latency {output.total_latency * 1000:.1f} ms  hits {engine.hits}"
                        f"  midi {midi.received}  ")
                    sys.stdout.flush()
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            # Wind down (a second Ctrl-C from here on forces the exit): MIDI first, so
            # no hit starts in the fade; the callback reads the MIDI client's frame
            # clock, so it gets its own clock back a block before that client goes.
            engine.block_clock, engine.clock_wrap = time.perf_counter, 0.0
            time.sleep(0.01 + args.blocksize / args.sr)
            midi.close()
            if not lost:
                output.fade_out()
                output.stop()
                output.close()
    print(f"\nstopped: {engine.hits} hits, {output.underflows} underflows, "
          f"{output.errors} callback errors, {engine.dropped + midi.dropped} events dropped, "
          f"{engine.late} hits late")
    if lost:
        # PortAudio's stop/close block forever once the JACK server is gone, and
        # its shutdown then asserts: report and leave without them.
        print("tympan play: error: the audio device stopped the stream (JACK server "
              "gone?); exiting", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    return 0


def render_main(argv: Sequence[str] | None = None) -> int:
    """Render a MIDI file through the engine to an audio file."""
    parser = argparse.ArgumentParser(prog="tympan render",
                                     description="Render a MIDI file with a kit, faster than "
                                                 "real time, through the live engine.")
    parser.add_argument("song", metavar="SONG.mid", help="Standard MIDI File (type 0 or 1)")
    parser.add_argument("--kit", metavar="FILE", help="kit file (default: the General MIDI kit)")
    parser.add_argument("--sr", type=int, default=48000, help="sample rate in Hz (default 48000)")
    parser.add_argument("--blocksize", type=int, default=128,
                        help="frames per block (default 128; the result does not depend on it)")
    parser.add_argument("--no-effects", action="store_true", help="bypass the effects chain")
    parser.add_argument("--bit-depth", type=int, choices=(16, 24, 32), default=24,
                        help="16/24-bit PCM or 32-bit float (wav only); default 24")
    parser.add_argument("-o", "--out", required=True, metavar="FILE",
                        help="output audio file (wav, flac, aiff, ogg, mp3)")
    args = parser.parse_args(argv)
    if not 8000 <= args.sr <= 384000:
        parser.exit(2, f"tympan render: error: --sr {args.sr}: allowed 8000..384000 Hz\n")
    if not 1 <= args.blocksize <= 8192:
        parser.exit(2, f"tympan render: error: --blocksize {args.blocksize}: allowed 1..8192\n")

    from synth.audio_writer import AudioWriteError, check_destination, write_audio

    from .kit import load_kit
    from .render import peak_dbfs, render_midi

    kit = load_kit(args.kit)
    try:  # before a render that may take a while, not after it
        check_destination(args.out, args.bit_depth)
    except AudioWriteError as err:
        parser.exit(2, f"tympan render: error: {err}\n")
    result = render_midi(args.song, kit, float(args.sr), args.blocksize,
                         effects=not args.no_effects)
    path = write_audio(args.out, result.audio, args.sr, args.bit_depth)
    speed = result.seconds / max(result.render_seconds, 1e-9)
    print(f"wrote {path}: {result.seconds:.2f} s stereo at {args.sr} Hz, peak "
          f"{peak_dbfs(result.audio):.1f} dBFS; {result.played} of {result.notes} notes hit a pad; "
          f"rendered in {result.render_seconds:.2f} s ({speed:.0f}x real time)")
    return 0
