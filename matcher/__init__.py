"""Tympan's sound matcher: recorded hit -> membrane parameters (imports ``synth``).

audio (load, onset-align) -> features (CQT) -> encoder -> model (exported
artifact) -> match (MatchResult: parameters, distances, determination via the
metric); jtfs and distances are the perceptual side. Refinement and the
nearest-neighbour baseline are still to come.
"""
