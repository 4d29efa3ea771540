"""Tympan's synthesizer: the struck rectangular membrane (FTM).

Layering: ``synth`` imports nothing else of Tympan's.

- :mod:`synth.params`    the parameter table, ``DrumParams``, physical <-> nu
- :mod:`synth.ftm`       parameters -> modal frequencies, decays, gains (pure)
- :mod:`synth.reference` offline numpy render (closed form), peak normalization
- :mod:`synth.twin`      differentiable torch twin, batches on CPU or CUDA
- :mod:`synth.kernels`   Numba kernels of the real-time voice
- :mod:`synth.voice`     ``VoicePreset``, ``VoiceBank``, ``DrumVoice``
- :mod:`synth.audio_writer`    atomic audio-file writing (pedalboard)

Importing ``synth`` itself loads neither numba nor torch.
"""

from .ftm import FTMConfig
from .params import NAMES, PARAMS, DrumParams, ParameterError

__all__ = ["DrumParams", "FTMConfig", "NAMES", "PARAMS", "ParameterError"]
