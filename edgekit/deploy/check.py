"""Task-level validation of an integer-activation file against the float model, and an interleaved speed check.

Validation (fails closed): the file runs in its runtime on the user's data when there is any (up to 16 samples,
held out from calibration where the data allows), else on the example inputs (seeds 0..3, as export validation
uses), and is compared with the float PyTorch model. Not both: random normal inputs are far outside what a model
calibrated on its data sees (digits CNN on [0, 1] images: cosine 0.27 on random inputs, 0.9999 on 64 real ones,
same file, same test accuracy as float), so mixing them would judge the inputs, not the file.
- NaN or Inf in any output fails, whatever the figures.
- cosine of every output: mean over the inputs >= FLOORS["mean_cosine"] (0.99) and on each input >=
  FLOORS["cosine"] (0.95). Why: measured on EfficientNet-Lite0 (RTN 8-bit, data-free ranges, k = 6), the
  logits' cosine to the float model was 0.9992 at worst on the random example inputs, and 0.9955 mean / 0.988
  worst over 64 Fashion-MNIST images (ORT; OpenVINO 0.9953 / 0.985). The mean catches a systematic error, the
  per-input bound a cascade on one input. The fp32 export tolerance (1e-4 of scale) cannot apply: rounding
  activations is the point. A plain cosine is not enough on its own (next rule).
- response cosine >= FLOORS["response_cosine"] (0.5): the cosine of both outputs minus the float model's mean
  output over the inputs, i.e. of the part that depends on the input. Why: an output with a large constant part
  (bias-dominated logits; a small net on random inputs) keeps a plain cosine near 1 even when the INT8 file
  returns a constant (seen: on a tiny CNN whose logits barely depend on the input, a residual range 1000x too
  small kept the cosine at 0.9975). Measured on
  EfficientNet-Lite0 as above: 0.923 on the 4 random inputs (their outputs differ little, so INT8 noise weighs
  more), 0.990 on the 64 images; the demo digits CNN data-free: 0.80 on random inputs, 0.9999 on real digits
  (test accuracy equal to float); a constant output gives about 0, the broken tiny CNN 0.008.
- top-1 agreement of classifier outputs ([batch, classes]) >= FLOORS["top1_agreement"] (0.9), counted only on
  inputs where the float model's top-1 leads its runner-up by at least MARGIN x the logits' standard deviation.
  Why: on random inputs, and on images far from the training set, an ImageNet classifier's logits are near-ties
  that any rounding flips (weights-only int8 already agrees on only ~0.87 of Fashion-MNIST images for
  EfficientNet-Lite0); flips among clear winners are what a user would notice (measured: 32 of 32 kept). With no
  clear winner among the inputs the figure is absent and cosine decides.
Speed: the files are opened in the same runtime with the same threads and run alternately in one loop (after
warm-up), so drift and load hit all of them alike; the median per file and the ratios to fp32 are recorded.
"""
from __future__ import annotations

import os

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..model_io import InputSpec, example_inputs

FLOORS = {"mean_cosine": 0.99, "cosine": 0.95, "response_cosine": 0.5, "top1_agreement": 0.9}
MARGIN = 0.5  # a "clear winner": top-1 logit minus runner-up >= MARGIN x std of the logits


def requested_floors(floors: dict[str, Any] | None, deploy: str | None) -> dict[str, float] | None:
    """`--deploy-floor` as compress and bench take it: None when not given; an error without --deploy; else
    check_floors."""
    if not floors:
        return None
    if deploy is None:
        raise ConfigError("--deploy-floor sets the floors of --deploy int8|auto's validation; add --deploy or drop it")
    return check_floors(floors)


def check_floors(floors: dict[str, Any] | None) -> dict[str, float]:
    """A user's floors (`--deploy-floor KEY=VALUE`): known keys, numbers in [0, 1]; a clear error otherwise.

    Why a user may set them: the defaults are argued for classifier logits (module docstring); an embedding model
    can state its own task floor (issue 14's MiniLM goal is cosine >= 0.97), and a user who needs more can raise
    them. What was used is recorded in the validation's `tolerance`; NaN/Inf fail whatever the floors."""
    out: dict[str, float] = {}
    for k, v in (floors or {}).items():
        if k not in FLOORS:
            raise ConfigError(f"--deploy-floor {k}: not a deploy floor; choose from {', '.join(FLOORS)} "
                              f"(e.g. --deploy-floor mean_cosine=0.98)")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"--deploy-floor {k}={v!r}: give a number in [0, 1], e.g. {k}={FLOORS[k]}") from None
        if not 0.0 <= x <= 1.0:  # NaN fails this too
            raise ConfigError(f"--deploy-floor {k}={v}: give a number in [0, 1], e.g. {k}={FLOORS[k]}")
        out[k] = x
    return out


def validation_inputs(specs: Sequence[InputSpec], samples: Sequence[Sequence[Any]] | None,
                      limit: int = 16) -> list[tuple[torch.Tensor, ...]]:
    """The user's samples (up to `limit`) when given, else the example inputs (seeds 0..3)."""
    if not samples:
        return [example_inputs(list(specs), seed=s) for s in range(4)]
    return [tuple(t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t)) for t in s)
            for s in list(samples)[:limit]]


def range_inputs(specs: Sequence[InputSpec], input_range: Sequence[float], n: int = 4) -> list[tuple[Any, ...]]:
    """Seeded inputs whose float tensors are uniform in the app's stated input range (integer inputs as the example
    inputs): what to judge a data-free INT8 file on when its input range is given (random normal inputs would fall
    outside it, and the int8 input would clip them)."""
    lo, hi = float(input_range[0]), float(input_range[1])
    out = []
    for s in range(n):
        g = torch.Generator().manual_seed(1000 + s)
        out.append(tuple(lo + (hi - lo) * torch.rand(t.shape, generator=g) if t.is_floating_point() else t
                         for t in example_inputs(list(specs), seed=s)))
    return out


def _clear(ref: np.ndarray) -> np.ndarray:
    """Rows whose top-1 clearly leads (see MARGIN)."""
    srt = np.sort(ref, axis=1)
    return (srt[:, -1] - srt[:, -2]) >= MARGIN * ref.std(axis=1)


def _response_cosine(refs: list[np.ndarray], gots: list[np.ndarray]) -> float:
    """Cosine of the input-dependent part: both outputs minus the float model's mean output over the inputs."""
    mean = np.mean(refs, axis=0)
    a = np.concatenate([(r - mean).ravel() for r in refs])
    b = np.concatenate([(g - mean).ravel() for g in gots])
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def fidelity(model: nn.Module, path: Path, runtime: str, inputs: list[tuple[torch.Tensor, ...]],
             floors: dict[str, float] | None = None, threads: int | None = None,
             ov_dynamic_quant: bool = False) -> dict[str, Any]:
    """Figures per output and pass/fail against the floors (see module docstring). `ov_dynamic_quant`: OpenVINO
    with its own dynamic activation quantization on (recorded in runtime_config, so readers open it the same way)."""
    from ..export.validate import compare
    from ..runtimes import open_session

    floors = {**FLOORS, **(floors or {})}
    sess = open_session(path, runtime, threads=threads, ov_dynamic_quant=ov_dynamic_quant)
    per: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for x in inputs:
        with torch.no_grad():
            out = model(*x)
        refs = [o.detach().float().numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]
        got = sess.run({n: t.numpy() for n, t in zip(sess.input_names, x)})
        for i, (r, g) in enumerate(zip(refs, got)):
            name = sess.output_names[i] if i < len(sess.output_names) else f"output_{i}"
            g = np.asarray(g, dtype=np.float32).reshape(r.shape)
            acc = per.setdefault(name, {"cos": [], "agree": [], "max_abs": 0.0, "max_abs_scaled": 0.0,
                                        "rel_l2": 0.0, "finite": True, "refs": [], "gots": []})
            acc["finite"] &= bool(np.isfinite(g).all())
            f = compare(r, np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
            acc["cos"].append(f["cosine"])
            acc["refs"].append(r.astype(np.float64))
            acc["gots"].append(np.nan_to_num(g.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
            for k in ("max_abs", "max_abs_scaled", "rel_l2"):
                acc[k] = max(acc[k], f[k])
            if r.ndim == 2 and r.shape[1] > 1:
                clear = _clear(r)
                acc["agree"].extend((r.argmax(1) == g.argmax(1))[clear].tolist())
    outputs = {}
    for name, a in per.items():
        o = {"cosine": float(min(a["cos"])), "mean_cosine": float(np.mean(a["cos"])), "max_abs": a["max_abs"],
             "max_abs_scaled": a["max_abs_scaled"], "rel_l2": a["rel_l2"], "finite": a["finite"],
             "response_cosine": _response_cosine(a["refs"], a["gots"])}
        if not a["finite"]:
            failed.append(f"output '{name}' has NaN or Inf")
        if o["mean_cosine"] < floors["mean_cosine"]:
            failed.append(f"output '{name}' mean cosine {o['mean_cosine']:.4f} < {floors['mean_cosine']}")
        if o["cosine"] < floors["cosine"]:
            failed.append(f"output '{name}' cosine {o['cosine']:.4f} < {floors['cosine']} on one input")
        if o["response_cosine"] < floors["response_cosine"]:
            failed.append(f"output '{name}' response cosine {o['response_cosine']:.4f} < {floors['response_cosine']} "
                          "(the part of the output that depends on the input is not reproduced)")
        if a["agree"]:
            o["top1_agreement"] = float(np.mean(a["agree"]))
            o["top1_counted"] = len(a["agree"])
            if o["top1_agreement"] < floors["top1_agreement"]:
                failed.append(f"output '{name}' top-1 agreement {o['top1_agreement']:.3f} < "
                              f"{floors['top1_agreement']} (on {len(a['agree'])} clear-winner inputs)")
        outputs[name] = o
    return {"precision": "int8", "reference": "float PyTorch model (the compressed model before deploy)",
            "tolerance": {**floors, "top1_margin": MARGIN, "rule": "see edgekit/deploy/check.py"},
            "inputs_checked": len(inputs), "outputs": outputs, "passed": not failed, "failed": failed,
            "device": sess.device, "runtime_config": sess.info.get("config", {})}


MIN_SECONDS = 1.0  # the deploy step's timing loop runs at least this long (module doc of interleaved below)


def interleaved(files: dict[str, Path | tuple[Path, bool]], runtime: str, inputs: tuple[torch.Tensor, ...],
                threads: int = 2,
                warmup: int = 3, runs: int = 20, slower_tolerance: float = 0.05,
                min_seconds: float = MIN_SECONDS) -> dict[str, Any]:
    """Latency of each file timed in one interleaved loop (edgekit.profile.interleaved: one worker, rotating order,
    paired ratios with a bootstrap interval); ratios to the 'fp32' entry, which must come first. At least `runs`
    rounds, and more (up to 20 x runs) until the loop has run `min_seconds`: a sub-millisecond model gets hundreds
    of rounds instead of 20, whose ratio moved by 0.2 between two runs of the same files. A file slower than
    FP32 by more than `slower_tolerance` gets its per-op cause (op types whose time grew, from the runtime's profiler)
    under "slower", so a forced INT8 file that loses says why."""
    from ..errors import UnsupportedModelError
    from ..profile import interleaved as timed
    from ..profile.ops import op_profile, slower_note

    labels = list(files)
    if labels[0] != "fp32":
        raise ValueError("interleaved: the 'fp32' file must come first")
    arrays = [t.numpy() for t in inputs]
    def spec(k: str, p: Path | tuple[Path, bool]) -> dict[str, Any]:  # (path, ov_dynamic_quant) or a path
        path, dq = p if isinstance(p, tuple) else (p, False)
        return {"path": str(path), "runtime": runtime, "threads": threads, "label": k, "ov_dynamic_quant": dq}

    res = timed([spec(k, p) for k, p in files.items()], rounds=runs, warmup=warmup, feeds=arrays,
                with_provenance=False, min_seconds=min_seconds)
    if res["status"] != "ok":
        raise UnsupportedModelError(f"timing the {runtime} files failed: {res['error']}")
    med = {f["label"]: f["timing_ms"]["p50"] for f in res["files"]}
    out: dict[str, Any] = {"median_ms": med, "runs": res["rounds"], "min_seconds": min_seconds, "warmup": warmup,
                           "threads": threads,
                           "ratio_to_fp32": {f["label"]: f["ratio"]["p50"] for f in res["files"][1:]},
                           "ratio_ci95": {f["label"]: f["ratio"]["ci95"] for f in res["files"][1:]},
                           "load": res.get("load"), "protocol": "edgekit.profile.interleaved (one worker, rotating "
                           "order, ratio of medians, paired bootstrap ci95" + (
                               "; ONNX Runtime threads stop spinning after each run" if runtime == "onnxruntime"
                               else "") + ")"}
    slow = {k: r for k, r in out["ratio_to_fp32"].items() if r > 1 + slower_tolerance}
    if slow:
        import tempfile

        from ..runtimes import open_session

        with tempfile.TemporaryDirectory(prefix="edgekit-ops-") as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)  # ORT writes its profile JSON into the working directory
            try:
                def prof(p: Path | tuple[Path, bool]) -> dict[str, Any]:
                    path, dq = p if isinstance(p, tuple) else (p, False)
                    sess = open_session(path, runtime, threads=threads, ov_dynamic_quant=dq)
                    feeds = {n: a for n, a in zip(sess.input_names, arrays)}
                    return op_profile(path, runtime, threads, "CPU", None, feeds, 10, dq)

                ref = prof(files["fp32"])
                out["slower"] = {k: slower_note(r, ref, prof(files[k])) for k, r in slow.items()}
            except Exception as e:  # noqa: BLE001 - the cause is a note; the ratio stands without it
                out["slower"] = {k: {"ratio": r, "summary": f"{r:.2f}x the fp32 latency (slower); per-op profile "
                                     f"unavailable: {str(e).splitlines()[0][:160]}"} for k, r in slow.items()}
            finally:
                os.chdir(cwd)
    return out