"""Shared evaluation plumbing: one `Predictor` over a torch module or an artifact, and the FP32 reference cache.

A Predictor takes named arrays with a leading sample axis and returns the model's outputs concatenated over
samples. Torch modules run in batches; artifacts run batch 1 (or the artifact's static batch, padding the last
batch by repeating a sample) through `edgekit.runtimes.open_session`, the same path profiling uses.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

ARTIFACT_RUNTIMES = ("onnxruntime", "openvino", "tflite", "onnx")


@dataclass
class Predictor:
    """Runs a model on named arrays; `runtime` is 'torch' or the runtime that executes the artifact."""

    runtime: str
    input_names: list[str]
    static_shapes: dict[str, list[Any]]
    call: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    batch: int = 1
    module: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def static_dim(self, name: str, axis: int) -> int | None:
        """The fixed size of an input axis, or None when dynamic / unknown."""
        shape = self.static_shapes.get(name)
        if not shape or axis >= len(shape):
            return None
        d = shape[axis]
        return d if isinstance(d, int) and d > 0 else None

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for all samples, run `batch` at a time."""
        n = len(next(iter(feeds.values())))
        outs: list[list[np.ndarray]] = []
        for s in range(0, n, self.batch):
            chunk = {k: v[s:s + self.batch] for k, v in feeds.items()}
            m = len(next(iter(chunk.values())))
            if self.runtime != "torch" and m < self.batch:  # static batch: pad, then drop the padding
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], self.batch - m, 0)]) for k, v in chunk.items()}
            res = self.call(chunk)
            outs.append([np.asarray(r)[:m] for r in res])
        return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def torch_predictor(module: nn.Module, input_names: list[str], batch: int, threads: int | None) -> Predictor:
    """Predictor over an nn.Module called positionally with `input_names` in order; tuple outputs become lists."""
    module = module.eval()

    def call(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode(), torch_threads(threads):
            out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in input_names])
        out = out if isinstance(out, (tuple, list)) else [out]
        return [o.float().numpy() for o in out]

    return Predictor("torch", list(input_names), {}, call, batch=batch, module=module)


def artifact_predictor(art: Path, runtime: str | None, threads: int | None) -> Predictor:
    """Predictor over an artifact's export for `runtime` (default: its onnxruntime export, else model.onnx)."""
    from ..artifact import export_file, read_manifest
    from ..runtimes import open_session

    man = read_manifest(art)
    if runtime is None:
        runtime = "onnxruntime" if "onnxruntime" in man.get("exports", {}) else "onnx"
    if runtime not in ARTIFACT_RUNTIMES:
        raise ConfigError(f"unknown runtime '{runtime}'; choose one of {', '.join(ARTIFACT_RUNTIMES)}")
    path = export_file(art, runtime)
    if "decoder" in man:
        return _decoder_predictor(art, man, path, runtime, threads)
    from ..runtimes import ov_dynamic_quant

    sess = open_session(path, "onnxruntime" if runtime == "onnx" else runtime, threads=threads,
                        ov_dynamic_quant=ov_dynamic_quant(man.get("exports", {}).get(runtime)))
    raw = {i["name"]: list(i.get("shape", [])) for i in man.get("inputs", [])}
    names = [i["name"] for i in man.get("inputs", [])] or list(sess.input_names)
    batch = next((s[0] for s in raw.values() if s and isinstance(s[0], int) and s[0] > 0), 1)
    # axes the manifest declares dynamic have no fixed size (the shape holds the example's size there)
    dyn = {i["name"]: {int(k) for k in (i.get("dynamic") or {})} for i in man.get("inputs", [])}
    shapes = {n: [None if ax in dyn.get(n, ()) else d for ax, d in enumerate(s)] for n, s in raw.items()}
    dtypes = {i["name"]: _np_dtype(i.get("dtype")) for i in man.get("inputs", [])}

    def call(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        f = {k: (v.astype(dtypes[k]) if dtypes.get(k) is not None else v) for k, v in feeds.items()}
        return sess.run(f)

    return Predictor(sess.runtime if runtime != "onnx" else "onnxruntime", names, shapes, call, batch=batch,
                     info={"artifact": str(art), "file": str(path), "outputs": list(sess.output_names)})


def _decoder_predictor(art: Path, man: dict[str, Any], path: Path, runtime: str, threads: int | None) -> Predictor:
    """A KV-cache decoder artifact seen as a full-sequence model: input_ids (N, T) -> logits (N, T, vocab), each
    sample fed as one prefill on an empty cache, through the decoder graph with the runtime settings its export
    was validated with (the same loop `edgekit generate` and `edgekit profile` drive)."""
    from ..genai.loop import open_decoder, validated_config

    rt = "onnxruntime" if runtime == "onnx" else runtime
    val = ((man.get("validation") or {}).get("onnx") if runtime == "onnx"  # the canonical model.onnx's own record
           else (man.get("exports", {}).get(runtime) or {}).get("validation"))
    dec = open_decoder(path, rt, man["decoder"], threads, validated_config(val, rt))

    def call(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = []
        for row in np.asarray(feeds["input_ids"], np.int64):
            dec.reset()
            outs.append(np.asarray(dec.step(row.tolist(), every=True), np.float32))
        return [np.stack(outs)]

    return Predictor(rt, ["input_ids"], {"input_ids": [1, None]}, call, batch=1,
                     info={"artifact": str(art), "file": str(path), "outputs": ["logits"], "decoder": True})


def _np_dtype(name: Any) -> np.dtype | None:
    """numpy dtype of a manifest dtype string ('float32', 'torch.int64'); None when unknown (no cast)."""
    try:
        return np.dtype(str(name).removeprefix("torch.")) if name else None
    except TypeError:
        return None


def make_predictor(model: Any, input_names: list[str], runtime: str | None, threads: int | None,
                   torch_batch: int) -> Predictor:
    """A Predictor for an nn.Module or an artifact folder path."""
    if isinstance(model, nn.Module):
        if runtime not in (None, "torch"):
            raise ConfigError(f"--runtime {runtime} needs an artifact folder; a torch model runs in torch")
        return torch_predictor(model, input_names, torch_batch, threads)
    return artifact_predictor(Path(model), runtime, threads)


def ref_key(*parts: Any) -> str:
    """Short stable hash of what a cached reference depends on (model checksum, task options, version)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_arrays(name: str, key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load `<cache>/eval/<name>-<key>.npz` (plain arrays, no pickle) or build and store it atomically."""
    from ..models.real import cache_dir

    d = cache_dir() / "eval"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)
    return arrays


def fit_probe(x: np.ndarray, y: np.ndarray, seed: int = 0, c: float = 1.0,
              standardize: bool = True) -> dict[str, np.ndarray]:
    """(Standardise +) multinomial logistic regression, as plain arrays so the head is fixed and cacheable."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = (x.mean(0), x.std(0) + 1e-6) if standardize else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
    clf = LogisticRegression(max_iter=3000, C=c, random_state=seed).fit((x - mu) / sd, y)
    return {"mu": mu, "sd": sd, "coef": clf.coef_, "intercept": clf.intercept_, "classes": clf.classes_}


def apply_probe(head: dict[str, np.ndarray], x: np.ndarray, prefix: str = "") -> np.ndarray:
    """Predicted labels of a fixed probe head on features `x`."""
    z = ((x - head[prefix + "mu"]) / head[prefix + "sd"]) @ head[prefix + "coef"].T + head[prefix + "intercept"]
    return head[prefix + "classes"][z.argmax(1)]


def feeds_for(pred: Predictor, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Map arrays to the predictor's inputs by position (artifact input names come from its manifest)."""
    if len(arrays) != len(pred.input_names):
        raise ConfigError(f"the model takes inputs {pred.input_names}, but this task feeds {len(arrays)}; "
                          "evaluate it with the task made for its model")
    return dict(zip(pred.input_names, arrays))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal entries (top-1 agreement of two prediction vectors)."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))
