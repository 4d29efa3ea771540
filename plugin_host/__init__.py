"""The real-time plugin host: MIDI in -> voices -> effects -> audio out.

Imports ``synth`` and ``matcher``. Not built yet: arrives with the plugin-host issue.
"""
