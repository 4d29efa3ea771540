"""Reference JTFS: kymatio-dev ``TimeFrequencyScattering`` (torch), run in a subprocess.

The PyPI package ``scrapl-loss`` vendors kymatio's unreleased 0.4.0.dev0 tree under
``<site-packages>/scrapl/kymatio``. Its top-level package is also called ``kymatio`` and
clashes with the installed kymatio 0.3.0, so the reference runs in a child interpreter
with that directory first on ``sys.path``; the calling process never imports it.

Config keys (mapped 1:1 onto ``TimeFrequencyScattering(...)`` of the dev tree):

- ``shape`` (or ``N``): signal length; ``J``, ``J_fr``: octaves in time / log-frequency
  (``J_fr`` has no default in the dev API); ``Q``: ``(Q1, Q2)``; ``Q_fr`` (default 1).
- ``T``: ``'global'`` (sum over time), int (local, support in samples) or None (= 2**J).
- ``F``: ``'global'``, int (support in first-order *bins*, i.e. filters n1), 0 (no
  frequential averaging) or None (= 2**J_fr). ``average_fr`` (bool) is not a dev
  argument: False maps to ``F=0``; True requires ``F != 0``.
- ``stride``, ``stride_fr``: optional powers of two (defaults 2**log2(T), 2**log2(F)).
- ``format``: ``'time'`` (default) or ``'joint'`` (dev bug: 'joint' fails for T='global').
- ``dtype``: ``'float64'`` (default; filters rebuilt from the float64 numpy design) or
  ``'float32'`` (the dev default, filters cast with ``.float()``).
- Not dev arguments: ``threads`` (torch intra-op threads in the child, default 1: on a
  shared 2-core box 2 threads are often 5-10x slower), ``repeats`` (forward timings, >=1).

Output ``S`` is always built from ``out_type='list'``, sorted like ``meta()`` (by
``(len(n), n)``) and flattened path by path (each path's coefficient reshaped to
``[B, -1]``); ``sizes[i]`` entries belong to meta row ``i``. With ``format='time'`` and
``T='global'`` every path is one number, so ``S`` is ``[B, P]`` aligned with meta rows.
(``out_type='array'`` stacks in generation order, which does NOT match ``meta()`` order.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
_DEV_ARGS = ("J", "J_fr", "Q", "shape", "T", "stride", "Q_fr", "F", "stride_fr", "format")
_META_NUM = ("n", "n_fr", "order", "xi", "sigma", "j", "xi_fr", "sigma_fr", "j_fr", "spin")
JAC_MODES = ("jacfwd", "rev", "rev_loop", "dbl_jvp")

__all__ = ["dev_kymatio_path", "dev_kwargs", "reference_jtfs", "reference_jacobian_time"]


def dev_kymatio_path() -> str:
    """Directory to put first on ``sys.path`` for the dev kymatio (scrapl is not imported)."""
    spec = importlib.util.find_spec("scrapl")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scrapl-loss is not installed: no vendored kymatio-dev")
    return os.path.join(list(spec.submodule_search_locations)[0], "kymatio")


def dev_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Map a reference config onto the dev ``TimeFrequencyScattering`` keyword arguments."""
    cfg = dict(config)
    if "N" in cfg:
        cfg.setdefault("shape", cfg.pop("N"))
    if "average_fr" in cfg:
        avg = cfg.pop("average_fr")
        if not avg:
            cfg["F"] = 0
        elif cfg.get("F", None) == 0:
            raise ValueError("average_fr=True contradicts F=0")
    cfg["shape"] = int(cfg["shape"])
    cfg["Q"] = tuple(int(q) for q in np.atleast_1d(cfg["Q"]))
    cfg.setdefault("format", "time")
    cfg.setdefault("Q_fr", 1)
    return {k: cfg[k] for k in _DEV_ARGS if k in cfg}


def _run(task: str, config: dict[str, Any], arrays: dict[str, np.ndarray],
         timeout: float) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="jtfs_ref_") as tmp:
        fin, fout = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(fin, **arrays)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--in", fin, "--out", fout,
               "--config", json.dumps(config), "--task", task]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"reference JTFS {task} timed out after {timeout} s") from err
        if proc.returncode != 0:
            raise RuntimeError(f"reference JTFS {task} failed (rc={proc.returncode}):\n"
                               + proc.stderr[-4000:])
        with np.load(fout, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def reference_jtfs(x: np.ndarray, config: dict[str, Any], *, timeout: float = 600) -> dict:
    """Dev-kymatio JTFS of a batch of signals.

    Parameters
    ----------
    x : np.ndarray, shape ``[B, N]``
        Signals (cast to ``config['dtype']``, default float64).
    config : dict
        See the module docstring.
    timeout : float
        Seconds allowed to the subprocess.

    Returns
    -------
    dict
        ``S`` ``[B, P_flat]`` float64 (flat paths in meta order), ``sizes`` ``[P]``,
        ``meta`` (dict of arrays, one row per path: ``key`` (str), ``n`` ``[P, 2]``
        (n1, n2; NaN where absent; joint: n1 NaN), ``n_fr``, ``order``, ``xi``/``sigma``/``j``
        ``[P, 2]`` (first-, second-order time filters), ``xi_fr``/``sigma_fr``/``j_fr``,
        ``spin``), ``build_s``, ``forward_s`` (best of ``repeats``) and ``first_forward_s``.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    out = _run("forward", config, {"x": x}, timeout)
    meta = {k[5:]: v for k, v in out.items() if k.startswith("meta_")}
    return {"S": out["S"], "sizes": out["sizes"], "meta": meta,
            "build_s": float(out["build_s"]), "forward_s": float(out["forward_s"]),
            "first_forward_s": float(out["first_forward_s"])}


def reference_jacobian_time(config: dict[str, Any], nu: np.ndarray, *, mode: str = "auto",
                            sr: float = 22050.0, eps: float = 1e-3, timeout: float = 600,
                            return_jacobian: bool = False) -> dict:
    """Time the Jacobian ``d Phi(g(nu)) / d nu`` (``[P, 5]`` per sound) with the reference.

    ``g = MembraneTwin(sr, N).from_nu``, ``Phi = log1p(S / eps)``, ``S`` flat as in
    :func:`reference_jtfs`. ``mode``: ``'jacfwd'`` (torch.func forward mode), ``'rev'``
    (``torch.autograd.functional.jacobian``, reverse mode, vectorized), ``'rev_loop'`` (same,
    one backward per output), ``'dbl_jvp'`` (5 JVPs by the double-backward trick,
    ``torch.autograd.functional.jvp``) or ``'auto'`` (first that runs of jacfwd, dbl_jvp, rev).
    With the dev tree every forward mode fails (``ModulusStable`` has neither
    ``setup_context`` nor ``jvp``); ``'rev'`` (vectorized) needs ~15 GB at N=2**12 and 312
    outputs; ``'dbl_jvp'`` is the practical one. Timings include the twin render.

    Returns
    -------
    dict
        ``mode`` (the one that ran), ``per_sound_s``, ``total_s``, ``errors`` (mode -> message
        of the modes that failed), ``P``; ``jacobian`` ``[B, P, 5]`` if ``return_jacobian``.
    """
    nu = np.atleast_2d(np.asarray(nu, dtype=np.float64))
    cfg = {**config, "mode": mode, "sr": sr, "eps": eps, "return_jacobian": return_jacobian}
    out = _run("jacobian", cfg, {"nu": nu}, timeout)
    res = {"mode": str(out["mode"]), "per_sound_s": float(out["per_sound_s"]),
           "total_s": float(out["total_s"]), "P": int(out["P"]),
           "errors": json.loads(str(out["errors"]))}
    if return_jacobian:
        res["jacobian"] = out["jacobian"]
    return res


# ----------------------------------------------------------------- subprocess side
def _build(config: dict[str, Any]) -> tuple[Any, Any, float]:
    sys.path.insert(0, dev_kymatio_path())
    import torch
    import kymatio
    if not kymatio.__version__.startswith("0.4"):
        raise RuntimeError(f"imported kymatio {kymatio.__version__} from {kymatio.__file__}")
    from kymatio.torch import TimeFrequencyScattering
    torch.set_num_threads(int(config.get("threads", 1)))
    dtype = {"float64": torch.float64, "float32": torch.float32}[config.get("dtype", "float64")]
    t0 = time.perf_counter()
    to_float = torch.Tensor.float
    if dtype == torch.float64:     # register_filters hard-codes .float(): keep float64 instead
        torch.Tensor.float = torch.Tensor.double
    try:
        jtfs = TimeFrequencyScattering(**dev_kwargs(config), out_type="list")
    finally:
        torch.Tensor.float = to_float
    return jtfs, dtype, time.perf_counter() - t0


def _flat(paths: list[dict], batch: int) -> tuple[Any, list[int]]:
    import torch
    paths = sorted(paths, key=lambda p: (len(p["n"]), p["n"]))
    coefs = [p["coef"].reshape(batch, -1) for p in paths]
    return torch.cat(coefs, dim=1), [c.shape[1] for c in coefs]


def _meta(jtfs: Any) -> dict[str, np.ndarray]:
    m = jtfs.meta()
    n = np.array([[v if isinstance(v, (int, float, np.number)) else np.nan for v in row]
                  for row in m["n"]], dtype=np.float64)
    out = {f"meta_{k}": np.asarray(m[k], dtype=np.float64) for k in _META_NUM if k != "n"}
    out["meta_n"] = n
    out["meta_key"] = np.array([str(k) for k in m["key"]])
    return out


def _forward(x: np.ndarray, config: dict[str, Any]) -> dict[str, np.ndarray]:
    import torch
    jtfs, dtype, build_s = _build(config)
    xt = torch.as_tensor(x, dtype=dtype)
    times = []
    for _ in range(max(1, int(config.get("repeats", 1)))):
        t0 = time.perf_counter()
        with torch.no_grad():
            S, sizes = _flat(jtfs(xt), xt.shape[0])
        times.append(time.perf_counter() - t0)
    return {"S": S.double().numpy(), "sizes": np.array(sizes), "build_s": build_s,
            "forward_s": min(times), "first_forward_s": times[0], **_meta(jtfs)}


def _jacobian(nu: np.ndarray, config: dict[str, Any]) -> dict[str, np.ndarray]:
    import torch
    from torch.autograd.functional import jacobian, jvp
    sys.path.insert(0, str(_REPO))
    from synth.twin import MembraneTwin
    jtfs, dtype, _ = _build(config)
    twin = MembraneTwin(sr=float(config["sr"]), n_samples=int(dev_kwargs(config)["shape"]))
    eps = float(config["eps"])

    def phi(v: torch.Tensor) -> torch.Tensor:          # [5] -> [P]
        y = twin.from_nu(v[None].to(dtype))
        return torch.log1p(_flat(jtfs(y), 1)[0][0] / eps)

    def dbl_jvp(v: torch.Tensor) -> torch.Tensor:
        cols = [jvp(phi, v, e)[1] for e in torch.eye(5, dtype=v.dtype)]
        return torch.stack(cols, dim=-1)

    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "jacfwd": lambda v: torch.func.jacfwd(phi)(v),
        "rev": lambda v: jacobian(phi, v, vectorize=True),
        "rev_loop": lambda v: jacobian(phi, v),
        "dbl_jvp": dbl_jvp,
    }
    mode = config.get("mode", "auto")
    order = ["jacfwd", "dbl_jvp", "rev"] if mode == "auto" else [mode]
    nut = torch.as_tensor(nu, dtype=dtype)
    errors: dict[str, str] = {}
    for name in order:
        try:
            t0 = time.perf_counter()
            jac = torch.stack([runners[name](v) for v in nut])
            total = time.perf_counter() - t0
        except Exception as err:                        # record and try the next mode
            errors[name] = f"{type(err).__name__}: {err}"[:500]
            continue
        out = {"mode": name, "total_s": total, "per_sound_s": total / len(nut),
               "P": jac.shape[1], "errors": json.dumps(errors)}
        if config.get("return_jacobian"):
            out["jacobian"] = jac.double().numpy()
        return out
    raise RuntimeError(f"no Jacobian mode worked: {errors}")


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", required=True, help="JSON config (see module docstring)")
    ap.add_argument("--task", choices=("forward", "jacobian"), default="forward")
    args = ap.parse_args()
    config = json.loads(args.config)
    with np.load(args.inp) as z:
        arrays = {k: z[k] for k in z.files}
    if args.task == "forward":
        out = _forward(arrays["x"], config)
    else:
        out = _jacobian(arrays["nu"], config)
    np.savez(args.out, **out)


if __name__ == "__main__":
    _main()
