"""Which torch device a command runs on: one check for every command.

``tympan match``, ``tympan train metric | fit | evaluate | campaign`` and the
server's matcher all take a device name and call :func:`resolve_device`, so a
name that does not exist, or CUDA asked for where none is visible, is the same
one-line error everywhere.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEVICE_NAMES", "resolve_device"]

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str | None = "auto", local_rank: int | None = None) -> Any:
    """The :class:`torch.device` that ``device`` names, checked.

    Parameters
    ----------
    device : str or None
        ``"auto"`` or None (CUDA when visible, else CPU), ``"cpu"``, ``"cuda"``
        or ``"cuda:N"``.
    local_rank : int, optional
        For ``"cuda"`` without an index: the process's GPU (torchrun's
        ``LOCAL_RANK``); it becomes the current CUDA device.

    Raises
    ------
    ValueError
        An unknown name, CUDA where no CUDA device is visible, or an index
        beyond the visible devices.
    """
    import torch

    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: allowed {', '.join(map(repr, DEVICE_NAMES))}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available here (torch "
                         f"{torch.__version__}); use 'cpu'")
    index = dev.index if dev.index is not None else (
        local_rank if local_rank is not None else torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}, index {index}: only {torch.cuda.device_count()} "
                         "CUDA devices are visible")
    if local_rank is not None:
        torch.cuda.set_device(index)
    return torch.device("cuda", index)
