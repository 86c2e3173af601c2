"""npz: plain output fidelity on your own inputs (`--data FILE.npz`), against the model's own FP32 source.

The .npz holds one array per model input, matched by input name, else by order; axis 0 is the sample axis (the
same layout `compress --data` reads), the other axes must equal the input spec's. Every output is compared with
the FP32 source run in torch on the same samples: mean and minimum cosine, mean relative L2, and top-1 agreement
for [batch, classes] outputs. Arrays are read with allow_pickle=False.

Labels: a file with one array more than the model has inputs, the extra one 1-D integer with one value per sample
(named `labels` or `y`, or stored last: the layout `compress --data` takes for training), is read as class labels;
the result then adds `accuracy` of the model and, under "reference", of the FP32 source (first output,
[batch, classes]).
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


LABEL_NAMES = ("labels", "y")


def _split_labels(arrays: dict[str, np.ndarray], names: list[str]) -> np.ndarray | None:
    """Pop the label array (module doc) from `arrays`; None when the file has none."""
    if len(arrays) != len(names) + 1:
        return None
    extra = [k for k in arrays if k not in names]
    key = next((k for k in LABEL_NAMES if k in arrays), None)
    if key is None:
        key = extra[0] if len(extra) == 1 else list(arrays)[-1]
    y, n0 = arrays[key], len(next(iter(arrays.values())))
    if y.ndim != 1 or len(y) != n0 or not np.issubdtype(y.dtype, np.integer):
        return None
    return arrays.pop(key)


def load_inputs(ctx: Ctx) -> dict[str, np.ndarray]:
    """The .npz arrays mapped to the model's inputs, checked against the spec."""
    return load_inputs_and_labels(ctx)[0]


def load_inputs_and_labels(ctx: Ctx) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The .npz arrays mapped to the model's inputs, checked against the spec, and the labels if the file has them."""
    if ctx.data.suffix != ".npz":
        raise ConfigError(f"--task npz reads a .npz file of input arrays; got {ctx.data}")
    try:
        with np.load(ctx.data, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ConfigError(f"--data {ctx.data} is not a readable .npz of plain arrays ({e})") from None
    names = ctx.names
    labels = _split_labels(arrays, names)
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
    feeds = {s.name: a[:n].astype(np.dtype(s.dtype), copy=False) for s, a in zip(ctx.specs, got)}
    return feeds, (None if labels is None else labels[:n].astype(np.int64))


def run(ctx: Ctx, cfg: Config) -> dict[str, Any]:
    """Per-output cosine / relative L2 / top-1 agreement with the FP32 source."""
    feeds, labels = load_inputs_and_labels(ctx)
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
    reference: dict[str, float] = {}
    if labels is not None:
        o, r = outs[0], refs[0]
        if r.ndim != 2 or r.shape[1] < 2:
            raise ConfigError(f"--data {ctx.data} holds labels but the first output has shape {list(r.shape)}, not "
                              "[batch, classes]; leave the label array out to compare outputs only")
        if labels.min() < 0 or labels.max() >= r.shape[1]:
            raise ConfigError(f"--data {ctx.data}: labels span {labels.min()}..{labels.max()}, outside the "
                              f"model's {r.shape[1]} classes")
        metrics["accuracy"] = float(np.mean(o.argmax(1) == labels))
        reference["accuracy"] = float(np.mean(r.argmax(1) == labels))
    return {"runtime": pred.runtime, "samples": len(next(iter(feeds.values()))), "metrics": metrics,
            "reference": reference}
