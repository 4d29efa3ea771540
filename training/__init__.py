"""Offline training of the matcher (imports ``synth`` and ``matcher``).

protocol (theta grid, splits) -> metric_job (M(theta), sharded, resumable)
-> losses (P, PNP with damping, MSS, JTFS) -> data / trainer (fit, DDP,
exact resume) -> evaluate -> export (the artifact ``matcher.model`` loads);
campaign runs the whole sequence in time-boxed stages on a lent accelerator.
"""
