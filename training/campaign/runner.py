"""One call of the campaign: the plan's unfinished stages in order until the deadline.

Also ``tympan train campaign``, which runs a call and packs the state, or
unpacks a device call's files here.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from matcher.device import resolve_device
from synth.cli_parser import OneLineParser

from .plan import Plan, load_plan
from .stages import Clock, metric_stage, preflight, run_stage
from .state import CampaignError, StageRecord, State, hardware
from .transport import pack, unpack

__all__ = ["OVERHEAD_S", "run_campaign", "campaign_main"]

OVERHEAD_S = 30.0                # a run's probe, set-up and export, until one is measured


def _attempt(state: State, call: dict[str, Any], name: str, work: Callable[[], StageRecord],
             clock: Clock, say: Callable[[str], None]) -> bool:
    """Run one stage and record it, failed or not; True when it is done.

    Any error is recorded with the stage and the campaign goes on, except a
    :class:`CampaignError`, which is recorded and then raised.
    """
    t0 = time.perf_counter()
    say(f"[{name}] start ({clock.left():.0f} s left)")
    fatal = None
    try:
        record = work()
    except Exception as err:  # noqa: BLE001 - recorded; the campaign goes on
        record = StageRecord("failed", error=f"{type(err).__name__}: {err}")
        fatal = err if isinstance(err, CampaignError) else None
    if record.seconds is None:
        record = replace(record, seconds=time.perf_counter() - t0)
    state.record(name, record)
    call["ran"].append({"stage": name, "status": record.status,
                        "seconds": round(time.perf_counter() - t0, 1)})
    state.save()
    say(f"[{name}] {record.status} in {time.perf_counter() - t0:.1f} s"
        + (f": {record.error}" if record.status == "failed" else ""))
    if fatal is not None:
        raise fatal
    return record.done


def _run_need(state: State, budget_s: float, eval_s: float) -> float:
    """Seconds a run needs: its backstop, and the longest evaluation and overhead seen so far."""
    runs = [r.run for r in state.records().values() if r.run is not None]
    return (budget_s * 1.15 + max([eval_s] + [r.eval_s for r in runs])
            + max([OVERHEAD_S] + [r.overhead_s for r in runs]))


def run_campaign(plan: Plan, state_dir: str | Path, seconds: float, device: str = "cuda",
                 progress: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the plan's unfinished stages for about ``seconds``.

    A stage that fails is recorded with its error and the campaign goes on to
    the next (a failed run is retried by the next call); a failed preflight
    ends the call. The state is saved after every stage.

    Parameters
    ----------
    plan : Plan
    state_dir : str or Path
        The state directory; continued when it holds a state.
    seconds : float
        This call's time, ``plan.margin_s`` of it kept for packing.
    device : {"cuda", "cpu"}
    progress : bool
        Progress bars.
    say : callable
        Receives each line of the call's log.

    Returns
    -------
    dict
        The state (``campaign.json``'s contents).

    Raises
    ------
    CampaignError
        The preflight failed.
    """
    import torch

    if resolve_device(device).type == "cuda":
        # bf16 autocast covers the encoder; TF32 speeds the float32 rest (CQT, JTFS).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    clock = Clock(seconds, plan.margin_s)
    state = State(Path(state_dir))
    call = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds_given": seconds, "hardware": hardware(device), "ran": []}
    state.data["calls"].append(call)
    state.data["hardware"] = call["hardware"]
    state.data["plan"] = plan.path
    state.save()
    n_done = sum(state.done(s) for s in plan.stages())
    say(f"campaign: {len(plan.stages())} stages, {n_done} done; {seconds:.0f} s on "
        f"{call['hardware'].get('gpu', call['hardware']['device'])}")
    if n_done == len(plan.stages()):
        state.data["complete"] = True
        state.save()
        say("campaign: complete; nothing to do")
        return state.data

    def attempt(name: str, work: Callable[[], StageRecord]) -> bool:
        return _attempt(state, call, name, work, clock, say)

    if plan.preflight:
        if not attempt("preflight", lambda: preflight(plan, device)):
            raise CampaignError(f"preflight failed: {state.stage('preflight').error}")
    if plan.metric:
        for split in plan.metric.splits:
            name = f"metric:{split}"
            if state.done(name):
                continue
            if clock.left() <= 0:
                say(f"[{name}] deferred: no time left")
                break
            if not attempt(name, lambda s=split: metric_stage(plan.metric, s, state, device,
                                                              clock, progress)):
                break          # later splits wait for this one (and runs for train/val)
    metric_ready = plan.metric is None or all(state.done(f"metric:{s}")
                                              for s in plan.metric.splits if s != "test")
    for run in plan.runs:
        name = f"run:{run.name}"
        if state.done(name):
            continue
        if run.loss() == "pnp" and not metric_ready:
            say(f"[{name}] deferred: the metric is not finished")
            continue
        need = _run_need(state, run.budget_s, run.eval_s)
        if clock.left() < need:
            say(f"[{name}] deferred: needs about {need:.0f} s, {max(clock.left(), 0):.0f} s left")
            continue
        attempt(name, lambda r=run: run_stage(r, state, device, plan.half, progress))
    pending = [s for s in plan.stages() if not state.done(s)]
    state.data["complete"] = not pending
    state.save()
    say(f"campaign: {'complete' if not pending else 'pending: ' + ', '.join(pending)}"
        + (f"; best {state.data['best']['run']} (test JTFS {state.data['best']['jtfs_mean']:.4g})"
           if state.data.get("best") else ""))
    return state.data


def campaign_main(argv: Sequence[str]) -> int:
    """``tympan train campaign``: run, pack or unpack a time-boxed campaign."""
    parser = OneLineParser(prog="tympan train campaign", description=(
        "Run a GPU campaign plan (metric, time-boxed reference runs, evaluation, export) for a "
        "given number of seconds, continuing from the state directory; or move that state "
        "between machines (--pack on the device, --unpack here)."))
    parser.add_argument("--plan", metavar="FILE", help="campaign plan (configs/gpu/campaign.toml)")
    parser.add_argument("--state", required=True, metavar="DIR", help="campaign state directory")
    parser.add_argument("--deadline-s", type=float, default=540.0, metavar="S",
                        help="seconds this call may run, packing included (540)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--pack", metavar="OUT", help="after running, write the state's parts, "
                        "the exported model and the log into OUT")
    parser.add_argument("--unpack", metavar="FILES", help="only rebuild --state from the parts "
                        "in FILES (a device call's files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.unpack:
        state = unpack(args.unpack, args.state)
        done = [n for n, rec in State(state).records().items() if rec.done]
        print(f"unpacked into {state}: done {', '.join(done) or 'nothing'}")
        return 0
    if not args.plan:
        raise ValueError("--plan FILE is needed to run a campaign (or --unpack FILES)")
    if not args.deadline_s > 0:
        raise ValueError(f"--deadline-s {args.deadline_s}: allowed a positive number of seconds")
    plan = load_plan(args.plan)
    log: list[str] = []

    def say(text: str) -> None:
        log.append(text)
        print(text, flush=True)

    code = 0
    try:
        data = run_campaign(plan, args.state, args.deadline_s, args.device,
                            progress=not args.quiet, say=say)
        failed = [n for n, s in data["stages"].items() if s.get("status") == "failed"]
        code = 1 if failed else 0
    except CampaignError as err:
        say(f"campaign stopped: {err}")
        code = 1
    finally:
        if args.pack:
            files = pack(args.state, args.pack, "\n".join(log) + "\n")
            print("packed: " + ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)"
                                         for p in files))
    return code
