"""Moving a campaign's state between machines: ``pack`` on the device, ``unpack`` here.

A device call returns at most 8 files of at most 16 MiB each, so the state
travels as a gzipped tar cut into ``state.tgz.NN`` parts, with the exported
model and the call's log as files of their own. Checkpoints (64 MB each with
Adam's state) and TensorBoard logs stay behind: a run is fitted, evaluated
and exported within one call and needs neither afterwards.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from synth.files import atomic_write, atomic_write_text

from .stages import MODEL

__all__ = ["PART_BYTES", "MAX_PARTS", "LOG", "pack", "unpack"]

PART_BYTES = 15 * 2**20          # device calls return files of at most 16 MiB
MAX_PARTS = 6                    # ... and 8 files: parts + model + log
LOG = "campaign.log"


def _excluded(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """``tarfile`` filter: None for what stays behind (checkpoints, temp files, tb/, the model)."""
    parts = Path(info.name).parts
    if not parts:
        return info
    if info.name.endswith((".pt", ".tmp")) or "tb" in parts \
            or parts[-2:] == ("export", MODEL):     # the model travels as its own file
        return None
    return info


def pack(state_dir: str | Path, out: str | Path, log: str | None = None) -> list[Path]:
    """Write the state as ``state.tgz.NN`` parts plus the exported model and the log into ``out``.

    Parameters
    ----------
    state_dir : str or Path
        The campaign's state directory.
    out : str or Path
        Where the files go (a device call's ``$OUT``); made when absent.
    log : str, optional
        The call's log, written as ``campaign.log``.

    Returns
    -------
    list of Path
        The files written: parts in order, then the model and the log when present.

    Raises
    ------
    ValueError
        The state would need more parts than a device call can return.
    """
    state_dir, out = Path(state_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(state_dir, arcname=".", filter=_excluded)
    data = buf.getvalue()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]
    if len(parts) > MAX_PARTS:
        raise ValueError(f"the packed state is {len(data) / 2**20:.1f} MiB: more than "
                         f"{MAX_PARTS} parts of {PART_BYTES // 2**20} MiB")
    files = []
    for i, part in enumerate(parts):
        path = out / f"state.tgz.{i:02d}"
        atomic_write(path, lambda f, part=part: f.write(part))
        files.append(path)
    model = state_dir / "export" / MODEL
    if model.exists():
        files.append(Path(shutil.copy2(model, out / MODEL)))
    if log is not None:
        atomic_write_text(out / LOG, log)
        files.append(out / LOG)
    return files


def unpack(files_dir: str | Path, state_dir: str | Path) -> Path:
    """Rebuild the state from what :func:`pack` wrote (e.g. a device call's files).

    The device's state supersedes a local one, which is kept beside it as
    ``{state_dir}.prev`` (replacing an older ``.prev``).

    Parameters
    ----------
    files_dir : str or Path
        The folder holding ``state.tgz.NN`` (and perhaps ``default.tympan``).
    state_dir : str or Path
        The state directory to rebuild.

    Returns
    -------
    Path
        ``state_dir``.

    Raises
    ------
    ValueError
        No parts, or parts that do not make a readable archive (one missing).
    """
    files_dir, state_dir = Path(files_dir), Path(state_dir)
    parts = sorted(files_dir.glob("state.tgz.[0-9][0-9]"))
    if not parts:
        raise ValueError(f"{files_dir} holds no state.tgz.NN parts (written by "
                         "'tympan train campaign --pack')")
    data = b"".join(p.read_bytes() for p in parts)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"the state parts in {files_dir} do not make a readable archive "
                         f"({err}): are all parts there?") from None
    if state_dir.exists():
        prev = state_dir.with_name(state_dir.name + ".prev")
        if prev.exists():
            shutil.rmtree(prev)
        state_dir.rename(prev)
    state_dir.mkdir(parents=True)
    with tar:
        tar.extractall(state_dir, filter="data")      # no links out, no absolute paths
    if (files_dir / MODEL).exists():
        (state_dir / "export").mkdir(exist_ok=True)
        shutil.copy2(files_dir / MODEL, state_dir / "export" / MODEL)
    return state_dir
