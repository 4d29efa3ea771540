"""The campaign's state: ``DIR/campaign.json`` and the typed record of each stage.

The stage runner writes a :class:`StageRecord` and the report reads one, so a
record's fields are named here and nowhere else. On disk a record stays the
flat JSON object of earlier campaigns (``status``, ``seconds``, the metric's
or the run's fields side by side), so older state files still load.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from synth.files import atomic_write

__all__ = ["STATE_FILE", "CampaignError", "MetricRecord", "RunRecord", "StageRecord", "State",
           "hardware"]

STATE_FILE = "campaign.json"
STATUSES = ("done", "partial", "failed")


class CampaignError(Exception):
    """A stage that makes the rest of this call pointless (the preflight failed)."""


@dataclass(frozen=True)
class MetricRecord:
    """What a ``metric:{split}`` stage has computed so far (summed over calls) and wrote.

    The checksums, sizes and ``file`` (relative to the state directory) are
    set once every shard is finished and merged; ``sha256_full`` is the merged
    float64 file's, ``sha256`` the compact float32 one's that training reads.
    """

    sounds_computed: int
    sounds: int
    sounds_per_s: float | None
    shards: str                     # "finished/total"
    batch: int                      # the batch that fitted in memory
    phi: str
    sha256_full: str | None = None
    bytes_full: int | None = None
    sha256: str | None = None
    bytes: int | None = None
    file: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """What a ``run:{name}`` stage measured: sizing, fitting, test evaluation, export.

    Times are in seconds, throughputs in sounds per second. ``probe`` holds
    the probe's ``step_s``, ``val_s`` and ``steps``; ``epoch_s`` each epoch's
    duration (validation included); ``report`` the evaluation JSON relative
    to the state directory; ``overhead_s`` what the stage took beyond fitting
    and evaluation (probe, set-up, export).
    """

    config: str
    loss: str
    pitch_known: bool
    budget_s: float
    probe: dict[str, float]
    n_train: int
    batch_size: int
    epochs_planned: int
    epochs_done: int
    steps: int
    fit_s: float
    epoch_s: list[float]
    samples_per_s: float
    step_samples_per_s: float
    best_step: int
    eval_s: float
    eval_batch: int
    eval_sounds: int
    jtfs_mean: float
    mss_mean: float
    p_loss: float
    report: str
    overhead_s: float = 0.0
    exported: bool | None = None    # True when exported; absent otherwise, as on disk


def _part(kind: type, d: dict[str, Any]) -> Any:
    """``kind`` from the keys of a flat record; None when its required keys are absent."""
    names = {f.name for f in fields(kind)}
    required = {f.name for f in fields(kind) if f.default is MISSING}
    if not required <= set(d):
        return None
    return kind(**{k: d[k] for k in names if k in d})


@dataclass(frozen=True)
class StageRecord:
    """One stage's outcome, as ``campaign.json`` keeps it under ``stages[name]``.

    Attributes
    ----------
    status : str
        ``done``, ``partial`` (a metric stopped at the deadline) or ``failed``.
    seconds : float or None
        The stage's time; a metric's sums its calls. None until the runner sets it.
    error : str or None
        ``Type: message`` of a failed stage.
    metric, run : MetricRecord or RunRecord, optional
        The stage's own measurements (a failed stage has none).
    """

    status: str
    seconds: float | None = None
    error: str | None = None
    metric: MetricRecord | None = None
    run: RunRecord | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"stage status {self.status!r}; allowed: {', '.join(STATUSES)}")

    @property
    def done(self) -> bool:
        return self.status == "done"

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object of ``campaign.json`` (unset optional fields left out)."""
        out: dict[str, Any] = {"status": self.status}
        for part in (self.metric, self.run):
            if part is not None:
                out.update((k, v) for k, v in asdict(part).items() if v is not None)
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageRecord":
        """Read a record written by :meth:`to_dict` (or by a campaign before it existed)."""
        if "status" not in d:
            raise ValueError(f"a stage record needs a status; keys: {sorted(d)}")
        return cls(d["status"], d.get("seconds"), d.get("error"),
                   _part(MetricRecord, d), _part(RunRecord, d))


class State:
    """``DIR/campaign.json``: stages, calls, hardware and the best run, saved atomically.

    Parameters
    ----------
    root : Path
        The state directory; made when absent.

    Attributes
    ----------
    data : dict
        The file's JSON: ``stages`` (name -> flat record), ``calls``, ``best``,
        ``hardware``, ``plan``, ``complete``.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        path = root / STATE_FILE
        self.data: dict[str, Any] = {"stages": {}, "calls": [], "best": None}
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except ValueError as err:
                raise ValueError(f"{path} is not a campaign state file ({err}); move it away "
                                 "to start over") from None

    def stage(self, name: str) -> StageRecord | None:
        """The stage's record; None when it has never run."""
        raw = self.data["stages"].get(name)
        return None if raw is None else StageRecord.from_dict(raw)

    def records(self) -> dict[str, StageRecord]:
        """Every stage's record, in the order they first ran."""
        return {n: StageRecord.from_dict(d) for n, d in self.data["stages"].items()}

    def done(self, name: str) -> bool:
        record = self.stage(name)
        return record is not None and record.done

    def record(self, name: str, record: StageRecord) -> None:
        """Replace the stage's record and save (an accumulating stage reads the old one first)."""
        self.data["stages"][name] = record.to_dict()
        self.save()

    def save(self) -> None:
        text = json.dumps(self.data, indent=2)
        atomic_write(self.root / STATE_FILE, lambda f: f.write(text.encode()))


def hardware(device: str) -> dict[str, Any]:
    """The machine a call ran on: device, torch, Python, CPUs, and the GPU's name and memory."""
    import torch

    hw = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "machine": platform.machine()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        hw.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                  cuda=torch.version.cuda)
    else:
        hw["cpu"] = platform.processor() or platform.machine()
    return hw
