"""Tympan's synthesizer: the struck rectangular membrane (FTM).

Layering: ``synth`` imports nothing else of Tympan's.

- :mod:`synth.params`    the parameter table, ``DrumParams``, physical <-> nu
- :mod:`synth.ftm`       parameters -> modal frequencies, decays, gains (pure)
- :mod:`synth.reference` offline numpy render (closed form), peak normalization
- :mod:`synth.twin`      differentiable torch twin, batches on CPU or CUDA
- :mod:`synth.kernels`   Numba kernels of the real-time voice
- :mod:`synth.voice`     ``VoicePreset``, ``VoiceBank``, ``DrumVoice``
- :mod:`synth.presets`   the showcase's named drums
- :mod:`synth.showcase`  the presets and a groove rendered for ``tympan demo``
- :mod:`synth.audio_writer` audio-file writing (pedalboard), temp file and rename
- :mod:`synth.files`     atomic writes and hashes for every layer
- :mod:`synth.cli`, :mod:`synth.cli_parser` ``tympan synth render``; the one-line-error parser

Importing ``synth`` itself loads neither numba nor torch.
"""

from .ftm import FTMConfig
from .params import NAMES, PARAMS, DrumParams, ParameterError

__all__ = ["DrumParams", "FTMConfig", "NAMES", "PARAMS", "ParameterError"]
