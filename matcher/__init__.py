"""Tympan's sound matcher: recorded hit -> membrane parameters (imports ``synth``).

audio (load, onset-align) -> features (CQT) -> encoder -> model (exported
artifact; onnx_model runs it on ONNX Runtime) -> match (MatchResult: parameters,
distances, determination via the metric). The other estimates: search (the dense
sound_index's candidates, re-ranked by JTFS), pitch (the hit's fundamental), refine
(Adam or Levenberg-Marquardt from the best candidate); jtfs_plan / jtfs, distances
and metric are the perceptual side; device picks the torch device.
"""
