"""npz: plain output fidelity on your own inputs (`--data FILE.npz`), against the model's own FP32 source.

The .npz holds one array per model input, matched by input name, else by order; axis 0 is the sample axis (the
same layout `compress --data` reads), the other axes must equal the input spec's. Every output is compared with
the FP32 source run in torch on the same samples: mean and minimum cosine, mean relative L2, and top-1 agreement
for [batch, classes] outputs. Arrays are read with allow_pickle=False.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from ..errors import ConfigError
from ._generic import Ctx, check_finite, cosines, rel_l2

GENERIC = True


class Config(BaseModel, extra="forbid"):
    """No options: the file decides the samples (--limit keeps the first N)."""


def load_inputs(ctx: Ctx) -> dict[str, np.ndarray]:
    """The .npz arrays mapped to the model's inputs, checked against the spec."""
    if ctx.data.suffix != ".npz":
        raise ConfigError(f"--task npz reads a .npz file of input arrays; got {ctx.data}")
    try:
        with np.load(ctx.data, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ConfigError(f"--data {ctx.data} is not a readable .npz of plain arrays ({e})") from None
    names = ctx.names
    if set(names) <= set(arrays):
        got = [arrays[n] for n in names]
    elif len(arrays) == len(names):
        got = list(arrays.values())
    else:
        raise ConfigError(f"--data {ctx.data} holds {', '.join(arrays) or 'no arrays'}; the model takes "
                          f"{', '.join(names)} (name the arrays so, or store exactly {len(names)} in order)")
    for a, s in zip(got, ctx.specs):
        if a.ndim != len(s.shape) or list(a.shape[1:]) != list(s.shape[1:]):
            raise ConfigError(f"--data array for '{s.name}' has shape {list(a.shape)}; the model takes "
                              f"[N, {', '.join(map(str, s.shape[1:]))}] (samples on axis 0)")
    n = min(len(a) for a in got)
    n = min(n, ctx.limit or n)
    if n < 1:
        raise ConfigError(f"--data {ctx.data} holds no samples")
    return {s.name: a[:n].astype(np.dtype(s.dtype), copy=False) for s, a in zip(ctx.specs, got)}


def run(ctx: Ctx, cfg: Config) -> dict[str, Any]:
    """Per-output cosine / relative L2 / top-1 agreement with the FP32 source."""
    feeds = load_inputs(ctx)
    pred = ctx.predictor()
    outs, refs = pred(feeds), ctx.ref_predictor()(feeds)
    metrics: dict[str, float] = {}
    for i, (o, r) in enumerate(zip(outs, refs)):
        check_finite(r, "the FP32 source")
        check_finite(o, "the model")
        if o.shape != r.shape:
            raise ConfigError(f"output {i} has shape {list(o.shape)}, the FP32 source's {list(r.shape)}; they are "
                              "not the same model")
        pre = "" if len(outs) == 1 else f"output_{i}."
        cos = cosines(r, o)
        metrics.update({f"{pre}cosine": float(cos.mean()), f"{pre}cosine_min": float(cos.min()),
                        f"{pre}rel_l2": float(rel_l2(r, o).mean())})
        if r.ndim == 2 and r.shape[1] > 1:
            metrics[f"{pre}top1_agreement"] = float(np.mean(r.argmax(1) == o.argmax(1)))
    return {"runtime": pred.runtime, "samples": len(next(iter(feeds.values()))), "metrics": metrics,
            "reference": {}}
