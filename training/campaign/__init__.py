"""A time-boxed training campaign on a lent GPU: metric, reference runs, evaluation, export.

``tympan train campaign --plan configs/gpu/campaign.toml --state DIR --deadline-s S``
runs the plan's stages in order until about S seconds have passed, skipping
the stages DIR already records as done. A device call lasts at most 10
minutes, so a campaign spans several calls and DIR travels between them
(``--pack OUT`` on the device, ``--unpack FILES`` here). Stages:

1. ``preflight`` (every call): the tiny configs through every code path on
   the device (metric, fit per loss, evaluate, half-precision export and
   load), so a broken environment costs seconds, not a call.
2. ``metric:{split}``: M(theta) of the split in resumable shards (stopped
   between shards at the deadline, continued by the next call), merged, then
   compacted to what training reads (cell ids + float32 M, 108 B per sound);
   the sha256 of the full merged file and of the compact one are recorded.
3. ``run:{name}``: a reference run file, time-boxed to its ``budget_s``,
   evaluated on the test split and exported in half precision to
   ``DIR/export/default.tympan`` when its mean test JTFS distance is the best
   so far.

``DIR/campaign.json`` records every stage (status, seconds, throughput,
epoch times, checksums), the hardware and each call. ``tympan train
campaign-report`` turns it into ``docs/results.md``.

The modules, in the order of the data flow:

- :mod:`.plan`: the plan file read into a frozen :class:`Plan` and checked;
- :mod:`.state`: ``campaign.json`` and the typed :class:`StageRecord`;
- :mod:`.stages`: preflight, metric and run stages, each returning a record;
- :mod:`.runner`: one call (the device is checked once, by
  ``matcher.device.resolve_device(device)``) and ``tympan train campaign``;
- :mod:`.transport`: ``pack`` / ``unpack`` of the state between machines;
- :mod:`.report`: ``docs/results.md`` and ``tympan train campaign-report``.
"""

from __future__ import annotations

from .plan import MetricPlan, Plan, RunPlan, load_plan
from .report import report_main, write_report
from .runner import campaign_main, run_campaign
from .stages import toml_text
from .state import CampaignError, MetricRecord, RunRecord, StageRecord, State
from .transport import pack, unpack

__all__ = ["Plan", "RunPlan", "MetricPlan", "load_plan", "run_campaign", "pack", "unpack",
           "campaign_main", "report_main", "write_report", "toml_text",
           "CampaignError", "MetricRecord", "RunRecord", "StageRecord", "State"]
