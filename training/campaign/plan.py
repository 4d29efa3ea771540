"""The campaign's plan: a TOML file read into frozen :class:`Plan` objects and checked once.

A plan (``configs/gpu/campaign.toml``) has top-level ``preflight`` and
``margin_s``, a ``[metric]`` table (``tympan train metric`` options), a
``[defaults]`` table of run settings, one ``[[run]]`` table per reference run
(``config = FILE`` plus any run setting) and ``[export] half``. Unknown keys
are errors: a typo must not silently spend a GPU call on the wrong work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import read_toml
from ..protocol import SPLITS

__all__ = ["MetricPlan", "RunPlan", "Plan", "load_plan"]


@dataclass(frozen=True)
class MetricPlan:
    """Which splits get M(theta), and how (``tympan train metric`` options).

    Attributes
    ----------
    splits : tuple of str
        Splits to compute, in order (each of ``training.protocol.SPLITS``).
    batch : int
        Sounds per pass on the device (halved on out-of-memory).
    shard_size : int
        Sounds per resumable shard.
    limit : int
        Sounds per split; 0 means the whole split.
    phi, n_samples, dtype
        The representation, the sound length (samples) and the stored precision.
    """

    splits: tuple[str, ...] = SPLITS
    batch: int = 32
    shard_size: int = 256
    limit: int = 0
    phi: str = "jtfs"
    n_samples: int = 2**16
    dtype: str = "float32"


@dataclass(frozen=True)
class RunPlan:
    """One reference run of the campaign.

    Attributes
    ----------
    config : str
        The run file (TOML, read by ``training.config.load_config``).
    budget_s : float
        Fitting time in seconds (probe, epochs, validation).
    n_val : int
        Validation subset; 0 keeps the run file's.
    eval_limit, eval_batch : int
        Test sounds evaluated (0: the whole split) and sounds per evaluation pass.
    eval_s : float
        Expected evaluation time in seconds until one has been measured.
    probe_steps : int
        Timed training steps of the probe that sizes the run.
    """

    config: str
    budget_s: float = 90.0
    n_val: int = 2048
    eval_limit: int = 0
    eval_batch: int = 64
    eval_s: float = 60.0
    probe_steps: int = 10

    @property
    def name(self) -> str:
        """The run's name: its file's stem (stage ``run:{name}``)."""
        return Path(self.config).stem

    def loss(self) -> str:
        """The run file's loss (``p`` when it names none); a ``pnp`` run needs the metric."""
        return read_toml(self.config).get("loss", "p")


@dataclass(frozen=True)
class Plan:
    """A campaign: preflight, metric, runs in order, export precision.

    Attributes
    ----------
    path : str
        The plan file, recorded in the state.
    preflight : bool
        Run the tiny configs through every code path at the start of each call.
    metric : MetricPlan or None
        The metric to compute; None for none.
    runs : tuple of RunPlan
        The reference runs, in the order they are attempted.
    half : bool
        Export the best run with float16 weights.
    margin_s : float
        Seconds kept free at the deadline for packing.
    """

    path: str
    preflight: bool = True
    metric: MetricPlan | None = MetricPlan()
    runs: tuple[RunPlan, ...] = ()
    half: bool = True
    margin_s: float = 20.0

    def stages(self) -> list[str]:
        """The names of the stages that make the campaign complete (preflight is not one)."""
        out = ["metric:" + s for s in (self.metric.splits if self.metric else ())]
        return out + ["run:" + r.name for r in self.runs]


def _table(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``kind`` built from the table ``raw[key]``; ValueError naming an unknown or bad key."""
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ValueError(f"{where}: [{key}] must be a table")
    allowed = set(kind.__dataclass_fields__) - {"path"}
    bad = sorted(set(table) - allowed)
    if bad:
        raise ValueError(f"{where}: [{key}] unknown keys {bad}; allowed: {sorted(allowed)}")
    try:
        return kind(**table)
    except TypeError as err:
        raise ValueError(f"{where}: [{key}] {err}") from None


def _metric(raw: dict[str, Any], where: str) -> MetricPlan:
    from ..metric_job import DTYPES
    from ..phi import PHIS

    metric = _table(raw, "metric", MetricPlan, where)
    metric = replace(metric, splits=tuple(metric.splits))
    if metric.phi not in PHIS or metric.dtype not in DTYPES:
        raise ValueError(f"{where}: [metric] phi {metric.phi!r} / dtype {metric.dtype!r}; "
                         f"allowed phi {', '.join(PHIS)}, dtype {', '.join(DTYPES)}")
    for s in metric.splits:
        if s not in SPLITS:
            raise ValueError(f"{where}: [metric] split {s!r}; allowed: {', '.join(SPLITS)}")
    return metric


def _runs(raw: dict[str, Any], where: str) -> tuple[RunPlan, ...]:
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict) or "config" in defaults:
        raise ValueError(f"{where}: [defaults] must be a table of run settings (no 'config')")
    runs = []
    for i, entry in enumerate(raw.get("run", [])):
        if not isinstance(entry, dict) or "config" not in entry:
            raise ValueError(f"{where}: [[run]] number {i + 1} needs config = 'FILE'")
        run = _table({"run": {**defaults, **entry}}, "run", RunPlan, where)
        if not Path(run.config).is_file():
            raise ValueError(f"{where}: run file {run.config} does not exist")
        if run.budget_s <= 0 or run.probe_steps < 1:
            raise ValueError(f"{where}: run {run.name}: budget_s must be > 0 and probe_steps "
                             f">= 1 (budget_s = {run.budget_s!r}, probe_steps = "
                             f"{run.probe_steps!r})")
        runs.append(run)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: two runs share a name (the run file's stem): {names}")
    return tuple(runs)


def load_plan(path: str | Path) -> Plan:
    """Read and check a campaign plan.

    Parameters
    ----------
    path : str or Path
        The plan file (TOML).

    Returns
    -------
    Plan

    Raises
    ------
    ValueError
        One line naming the file, the key, the value and what is allowed.
    """
    path = Path(path)
    where = str(path)
    raw = read_toml(path, "plan file")
    top = {"preflight", "metric", "defaults", "run", "export", "margin_s"}
    bad = sorted(set(raw) - top)
    if bad:
        raise ValueError(f"{where}: unknown keys {bad}; allowed: {sorted(top)}")
    metric = _metric(raw, where) if "metric" in raw else None
    runs = _runs(raw, where)
    export = raw.get("export", {})
    if not isinstance(export, dict) or set(export) - {"half"}:
        raise ValueError(f"{where}: [export] allows only half = true|false")
    return Plan(where, bool(raw.get("preflight", True)), metric, runs,
                bool(export.get("half", True)), float(raw.get("margin_s", 20.0)))
