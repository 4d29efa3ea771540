"""What the benchmark scripts share: the repository on the path, machine facts, the
recorded hit sets, the match methods and how a match is scored (``eval_match.py``,
``eval_real.py``)."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # Run as `python benchmarks/X.py` from a checkout that is not pip-installed.
    try:
        import synth  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))


GMROCKKIT = "/usr/share/hydrogen/data/drumkits/GMRockKit"   # Debian's hydrogen-data
_KIT_DRUMS = ("Kick", "Snare", "Tom1", "Tom2", "TomFloor")
_DRUMS = tuple(f"{d}-*.wav" for d in _KIT_DRUMS)
# The same 25 files by name: every velocity layer of the kick, snare and three toms.
GMROCKKIT_DRUMS = tuple(sorted(f"{d}-{v}.wav" for d in _KIT_DRUMS
                               for v in ("Softest", "Soft", "Med", "Hard", "Hardest")))

SONIC_PI = "/usr/share/sonic-pi/samples"   # Debian's sonic-pi-samples (CC0 / CC-BY)
# The membranophone one-shots of sonic-pi-samples, by name so that the set is fixed
# (61 files). Left out: cymbals, hats, splashes, the cowbell, loops (loop_*, loop_tabla),
# drum_roll, and the electronic sounds that are neither kick nor snare (elec_fuzz_tom,
# blips, bells, ...).
SONIC_PI_DRUMS = (
    # acoustic kit: kicks, snares, toms
    "drum_bass_hard.flac", "drum_bass_soft.flac", "drum_heavy_kick.flac",
    "drum_snare_hard.flac", "drum_snare_soft.flac",
    "drum_tom_hi_hard.flac", "drum_tom_hi_soft.flac", "drum_tom_mid_hard.flac",
    "drum_tom_mid_soft.flac", "drum_tom_lo_hard.flac", "drum_tom_lo_soft.flac",
    # bass drums
    "bd_808.flac", "bd_ada.flac", "bd_boom.flac", "bd_fat.flac", "bd_gas.flac",
    "bd_haus.flac", "bd_klub.flac", "bd_mehackit.flac", "bd_pure.flac", "bd_sone.flac",
    "bd_tek.flac", "bd_zome.flac", "bd_zum.flac",
    # snares
    "sn_dolf.flac", "sn_dub.flac", "sn_generic.flac", "sn_zome.flac",
    # tabla: every single stroke
    "tabla_dhec.flac", "tabla_ghe1.flac", "tabla_ghe2.flac", "tabla_ghe3.flac",
    "tabla_ghe4.flac", "tabla_ghe5.flac", "tabla_ghe6.flac", "tabla_ghe7.flac",
    "tabla_ghe8.flac", "tabla_ke1.flac", "tabla_ke2.flac", "tabla_ke3.flac",
    "tabla_na.flac", "tabla_na_o.flac", "tabla_na_s.flac", "tabla_re.flac",
    "tabla_tas1.flac", "tabla_tas2.flac", "tabla_tas3.flac", "tabla_te1.flac",
    "tabla_te2.flac", "tabla_te_m.flac", "tabla_te_ne.flac", "tabla_tun1.flac",
    "tabla_tun2.flac", "tabla_tun3.flac",
    # electronic kicks and snares
    "elec_hollow_kick.flac", "elec_soft_kick.flac", "elec_snare.flac", "elec_hi_snare.flac",
    "elec_mid_snare.flac", "elec_lo_snare.flac", "elec_filt_snare.flac",
)
# The recorded sets of the real-hit evaluation: name -> (folder, files, Debian package).
REAL_SETS = {"GMRockKit": (GMROCKKIT, GMROCKKIT_DRUMS, "hydrogen-data"),
             "sonic-pi": (SONIC_PI, SONIC_PI_DRUMS, "sonic-pi-samples")}


def gmrockkit_hits(kit_dir: str = GMROCKKIT, required: bool = True) -> list[Path]:
    """The GMRockKit's kicks, snares and toms (every velocity layer: 25 files), sorted.

    With ``required``, none found is a clear error (exit) naming the package.
    """
    files = sorted(f for pat in _DRUMS for f in Path(kit_dir).glob(pat))
    if required and not files:
        raise SystemExit(f"no GMRockKit hits in {kit_dir}: install Debian's hydrogen-data "
                         "(apt-get install hydrogen-data; `make install` does) or pass --real DIR")
    return files


def listed_hits(folder: str | Path, names: tuple[str, ...], package: str) -> list[Path]:
    """``folder / name`` for each listed file, in order; any missing is an error (exit)
    in one line naming the Debian ``package`` that holds them."""
    files = [Path(folder) / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} of {len(files)} listed hits missing in {folder} "
                         f"(first: {missing[0]}): install Debian's {package} (apt-get install "
                         f"{package}; `make install` does)")
    return files


def example_hits() -> list[Path]:
    """The example hits shipped with ``tympan demo`` (``plugin_host/examples``)."""
    return sorted((ROOT / "plugin_host" / "examples").glob("*.flac"))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_base(watched: tuple[str, ...]) -> dict:
    """Date, CPU, Python, numpy, and the git commit (``+dirty(...)`` when any
    of the ``watched`` folders has uncommitted changes)."""
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "numpy": np.__version__,
    }
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", *watched],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_commit"] = commit + (f"+dirty({'/'.join(watched)})" if dirty else "")
    except Exception:  # informational only
        pass
    return info


def write_json(path: Path, doc: dict) -> None:
    """Write a benchmark's results (numpy scalars as floats) and say where."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"JSON written to {path}")


# --- matching and scoring (eval_match.py, eval_real.py) --------------------------------

NN_INDEX = ROOT / "benchmarks" / "results" / "nn-train-2000.npz"
# Stages of MatchResult.timings_ms that make a match; "distances" and "setup" do not.
MATCH_STAGES = ("load", "encode", "search", "rerank", "refine", "render")


def match_methods(budget_ms: float) -> dict[str, dict | None]:
    """The methods evaluated: name -> keyword arguments of ``Matcher.match_hit``
    (None: uniform random nu, the floor). ``budget_ms`` is the whole match's
    (``tympan match --budget-ms``): ``search`` sizes its re-ranking to it, and
    ``+refine`` (Adam on the MSS distance, ``--refine``) takes what is left."""
    refine = {"refine": "adam", "refine_loss": "mss", "budget_ms": budget_ms}
    return {"random": None, "nn": {"method": "nn"}, "encoder": {"method": "encoder"},
            "encoder+refine": {"method": "encoder", **refine}, "hybrid": {"method": "hybrid"},
            "hybrid+refine": {"method": "hybrid", **refine},
            "search": {"method": "search", "budget_ms": budget_ms}}


def add_matcher_args(ap, quick_help: str) -> None:
    """The options every match evaluation takes (model, NN index, budget, threads, ...)."""
    ap.add_argument("--budget-ms", type=float, default=2000.0,
                    help="whole-match budget per hit, ms (2000: tympan match's default)")
    ap.add_argument("--methods", default=None, metavar="A,B",
                    help="only these methods (comma-separated; nn is always run: the baseline)")
    ap.add_argument("--model", help="matcher artifact (default: the shipped model)")
    ap.add_argument("--nn-index", type=Path, default=NN_INDEX)
    ap.add_argument("--nn-size", type=int, default=2000,
                    help="training cells in the index when it is built (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--quick", action="store_true", help=quick_help)


def nn_index(path: Path, size: int) -> Path:
    """The cached NN index, built with ``tympan train nn-index`` when missing."""
    if not path.is_file():
        import tympan_cli

        print(f"building the NN index ({size} training cells) at {path}; done once")
        rc = tympan_cli.main(["train", "nn-index", "--out", str(path), "--limit", str(size)])
        if rc != 0:
            raise SystemExit(f"building the NN index failed (exit {rc})")
    return path


def load_matcher(args):
    """``(Matcher on the CPU with the NN index, load seconds)`` from :func:`add_matcher_args`'s
    options; the NN index is built first when missing (not counted in the load time)."""
    import time

    import torch

    from matcher.match import Matcher

    torch.set_num_threads(args.threads)
    index = nn_index(args.nn_index, args.nn_size)
    t0 = time.perf_counter()
    matcher = Matcher(args.model, device="cpu", nn_index=index)
    _ = matcher.model.features, matcher.jtfs
    return matcher, time.perf_counter() - t0


# An independent distance for the real-hit evaluation: auraloss's own code, at a
# configuration that is not our MSS's (which is auraloss's default resolutions).
AURALOSS_FFT_SIZES = (4096, 2048, 1024, 512, 256, 128)


@functools.lru_cache(maxsize=1)
def _auraloss_stft():
    import auraloss

    ffts = list(AURALOSS_FFT_SIZES)
    return auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=ffts, hop_sizes=[n // 4 for n in ffts], win_lengths=ffts,
        window="hann_window", w_sc=1.0, w_log_mag=1.0, w_lin_mag=1.0)


def auraloss_distance(x, y) -> float:
    """auraloss's ``MultiResolutionSTFTLoss`` of estimate ``x`` to target ``y``.

    Both are model-side signals as the JTFS and MSS distances compare them:
    peak-normalized, 2^16 samples at 22050 Hz (``[N]`` float arrays or tensors, one
    hit each). Configuration: six resolutions, FFT sizes 4096, 2048, 1024, 512, 256
    and 128 samples (186 ms down to 5.8 ms at 22050 Hz), hop = FFT size / 4 (75 %
    overlap), a Hann window as long as the FFT; per resolution the sum of spectral
    convergence ``||Y - X||_F / ||Y||_F``, mean L1 of the log magnitudes and mean L1 of
    the linear magnitudes (w_sc = w_log_mag = w_lin_mag = 1; auraloss's eps 1e-8 on
    the power), averaged over resolutions. Not the project's MSS distance (that is
    auraloss's default: FFT 512/1024/2048, shorter windows, no linear term), so no
    method wins here by descending one of our own metrics. Dimensionless, 0 for
    identical signals; the spectral convergence is normalized by the target, so
    ``d(x, y)`` and ``d(y, x)`` differ slightly.
    """
    import torch

    x, y = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in (x, y))
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"auraloss_distance takes two [N] signals, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    with torch.no_grad():
        return float(_auraloss_stft()(x[None, None], y[None, None]))


def run_methods(matcher, items: list[tuple[str, object, float]], methods: dict[str, dict | None],
                seed: int, extra: dict | None = None, progress: bool = True) -> list[dict]:
    """Match every item with every method and score each match.

    Parameters
    ----------
    items : list of (name, Hit, preparation ms)
    methods : name -> ``Matcher.match_hit`` keyword arguments, or None for random nu
        (seeded by ``seed``, drawn in item order).
    extra : name -> ``f(estimate, target) -> float``, distances scored besides JTFS and MSS.

    Returns
    -------
    list of dict
        One per (item, method): name, method, estimate (which candidate won: encoder or nn),
        nu, ms (preparation + the match's stages + the render of its sound: what a user
        waits for, not the scoring), stages_ms (the match's stages, ``MATCH_STAGES``),
        jtfs, mss and each extra distance, all of the render against the prepared target.
    """
    import time

    import torch
    from tqdm import tqdm

    from matcher.distances import feature_distance, multiscale_spectral_distance

    rng = np.random.default_rng(seed)
    rows = []
    for name, hit, prep_ms in tqdm(items, disable=not progress, unit="file", desc="matching"):
        target = torch.tensor(np.asarray(hit.audio), dtype=torch.float32)
        found = []
        for method, opts in methods.items():
            t0 = time.perf_counter()
            if opts is None:
                nu, chosen, stages = rng.uniform(-1.0, 1.0, 5), "random", {}
                ms = 1e3 * (time.perf_counter() - t0)
            else:
                r = matcher.match_hit(hit, score=False, **opts)
                nu, chosen = np.asarray(r.nu), r.estimate
                stages = {k: r.timings_ms[k] for k in MATCH_STAGES if k in r.timings_ms}
                ms = sum(stages.values())
            t0 = time.perf_counter()
            est = matcher.render_nu(nu)[0]
            ms += prep_ms + 1e3 * (time.perf_counter() - t0)
            found.append((method, chosen, nu, ms, stages, est))
        with torch.no_grad():   # one JTFS batch: the target and every method's render
            phi = matcher.jtfs.phi(torch.stack([target] + [f[-1] for f in found]))
            for (method, chosen, nu, ms, stages, est), phi_est in zip(found, phi[1:]):
                row = {"name": name, "method": method, "estimate": chosen,
                       "nu": [float(v) for v in nu], "ms": ms, "stages_ms": stages,
                       "jtfs": float(feature_distance(phi_est, phi[0])),
                       "mss": float(multiscale_spectral_distance(est, target))}
                row.update({k: float(f(est, target)) for k, f in (extra or {}).items()})
                rows.append(row)
    return rows


def summarize(rows: list[dict], methods, keys=("jtfs", "mss")) -> dict[str, dict]:
    """Per method: files, mean and median of each distance in ``keys``, mean/p50/p95 ms
    per file, and the mean |error| per parameter in nu where rows carry ``err``."""
    from synth.params import NAMES

    out = {}
    for method in methods:
        rs = [r for r in rows if r["method"] == method]
        ms = np.array([r["ms"] for r in rs])
        s = {"files": len(rs)}
        for k in keys:
            d = np.array([r[k] for r in rs])
            s[f"{k}_mean"], s[f"{k}_median"] = float(d.mean()), float(np.median(d))
        s.update(ms_per_file=float(ms.mean()), ms_p50=float(np.percentile(ms, 50)),
                 ms_p95=float(np.percentile(ms, 95)))
        if rs and "err" in rs[0]:
            s["mae_nu"] = dict(zip(NAMES, np.mean([r["err"] for r in rs], axis=0).tolist()))
        out[method] = s
    return out


def wins(rows: list[dict], a: str, b: str, key: str = "jtfs") -> tuple[int, int]:
    """Files where method ``a`` has a smaller ``key`` distance than ``b``, of all files."""
    da = {r["name"]: r[key] for r in rows if r["method"] == a}
    db = {r["name"]: r[key] for r in rows if r["method"] == b}
    return sum(da[k] < db[k] for k in da), len(da)


def box_plots(sets: dict[str, list[dict]], methods, keys: dict[str, str], path: Path) -> None:
    """Box plots (means marked, log scale) of each distance per method: one row per set,
    one column per distance (``keys``: row key -> axis label); PNG written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matcher.plot import save_figure

    methods = list(methods)
    fig, axes = plt.subplots(len(sets), len(keys), squeeze=False,
                             figsize=(1.0 + 0.75 * len(methods) * len(keys), 3.4 * len(sets)))
    for row, (name, rows) in zip(axes, sets.items()):
        files = len({r["name"] for r in rows})
        for ax, (key, label) in zip(row, keys.items()):
            ax.boxplot([[r[key] for r in rows if r["method"] == m] for m in methods],
                       showmeans=True)
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right")
            ax.set_title(f"{name} ({files} files): {label}")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    print(f"plot written to {path}")
