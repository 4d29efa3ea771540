"""The real-time plugin host: MIDI in -> voices -> effects -> audio out.

Imports ``synth`` and ``matcher``. Live: midi / jack_midi -> engine -> voices ->
effects -> audio_output (``tympan play``; ``render`` for MIDI files). Served: session
(one owner of the engine, the kit and the match state) -> server + routes (HTTP and
WebSocket, request_guard in front) and worker (the matcher in its own process);
kit (pads, velocity curves, CC mappings), signals (Ctrl-C), demo (``tympan demo``);
jack_server (a JACK dummy server for the tests and benchmarks, stdlib only).
"""
