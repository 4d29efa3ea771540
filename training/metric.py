"""The PNP metric ``M(theta) = J^T J`` for training: see :mod:`matcher.metric`.

The computation lives in the matcher (it also reports how well a match's
parameters are determined); training re-exports it under its historical name.
"""

from matcher.metric import StftTestPhi, jacobian, metric

__all__ = ["StftTestPhi", "jacobian", "metric"]
