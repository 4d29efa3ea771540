"""Offline training of the matcher (imports ``synth`` and ``matcher``).

Not built yet: protocol, metric M(theta), losses, trainer and export arrive
with the JTFS/metric and training issues.
"""
