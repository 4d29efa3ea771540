"""Tympan's sound matcher: recorded hit -> membrane parameters (imports ``synth``).

audio (load, onset-align) -> features (CQT) -> encoder -> model (exported
artifact) -> match (MatchResult: parameters, distances, determination via the
metric); refine (Adam or Levenberg-Marquardt from the estimate) and nn (the
nearest-neighbour index) are the other estimates; jtfs and distances are the
perceptual side.
"""
