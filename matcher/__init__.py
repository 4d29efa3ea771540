"""Tympan's sound matcher: recorded hit -> membrane parameters (imports ``synth``).

Not built yet: audio loading, CQT features, the EfficientNet-B0 encoder,
JTFS and refinement arrive with the matcher and JTFS issues.
"""
