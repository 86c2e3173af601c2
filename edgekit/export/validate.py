"""Compare a runtime's outputs with PyTorch's on the example input and a few random inputs; fail closed.

Figures per output: max abs error, relative L2, cosine, top-1 agreement for classifier-shaped outputs.
Tolerances are per precision and recorded in the manifest with the figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ExportMismatchError
from ..model_io import InputSpec, example_inputs

# max_abs applies to outputs scaled to unit RMS; rel_l2 and cosine are scale-free.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-4, "rel_l2": 1e-4, "cosine": 0.99999},
    "fp16": {"max_abs": 5e-2, "rel_l2": 1e-2, "cosine": 0.999},
    "int": {"max_abs": 5e-2, "rel_l2": 1e-2, "cosine": 0.9995},
}


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Fidelity figures of one output; max_abs is relative to the reference's RMS (so 1e-4 means 1e-4 of scale)."""
    ref64, got64 = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    rms = max(float(np.sqrt((ref64 ** 2).mean())), 1e-12)
    diff = ref64 - got64
    out = {
        "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
        "max_abs_scaled": float(np.abs(diff).max() / rms) if diff.size else 0.0,
        "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(ref64), 1e-12)),
        "cosine": float(ref64 @ got64 / max(np.linalg.norm(ref64) * np.linalg.norm(got64), 1e-12)),
    }
    if ref.ndim == 2 and ref.shape[1] > 1:
        out["top1_agreement"] = float((ref.argmax(1) == got.argmax(1)).mean())
    return out


def _torch_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().float().numpy() for o in outs]


def validate(model: nn.Module, specs: Sequence[InputSpec], path: Path, runtime: str, precision: str = "fp32",
             n_random: int = 3, threads: int | None = None) -> dict:
    """Run `path` in `runtime` and PyTorch on the same inputs; raise ExportMismatchError over tolerance."""
    from ..profile.runners import open_session

    tol = TOLERANCES[precision]
    sess = open_session(path, runtime, threads=threads)
    worst: dict[str, dict[str, float]] = {}
    for seed in range(n_random + 1):
        inputs = example_inputs(list(specs), seed=seed)
        ref = _torch_outputs(model, inputs)
        got = sess.run({n: t.numpy() for n, t in zip(sess.input_names, inputs)})
        for i, (r, g) in enumerate(zip(ref, got)):
            name = sess.output_names[i] if i < len(sess.output_names) else f"output_{i}"
            if r.shape != np.asarray(g).shape:
                raise ExportMismatchError(f"{runtime}: output '{name}' has shape {np.asarray(g).shape}, PyTorch gives "
                                          f"{r.shape}; the export is wrong, no artifact was written")
            f = compare(r, np.asarray(g))
            w = worst.setdefault(name, dict(f))
            for k in ("max_abs", "max_abs_scaled", "rel_l2"):
                w[k] = max(w[k], f[k])
            for k in ("cosine", "top1_agreement"):
                if k in f:
                    w[k] = min(w[k], f[k])
    for name, f in worst.items():
        bad = f["max_abs_scaled"] > tol["max_abs"] or f["rel_l2"] > tol["rel_l2"] or f["cosine"] < tol["cosine"]
        if bad:
            raise ExportMismatchError(
                f"{runtime} output '{name}' differs from PyTorch: max_abs {f['max_abs']:.3g} "
                f"(scaled {f['max_abs_scaled']:.3g}), rel_l2 {f['rel_l2']:.3g}, cosine {f['cosine']:.6f}; tolerance "
                f"({precision}) max_abs {tol['max_abs']}, rel_l2 {tol['rel_l2']}, cosine {tol['cosine']}; "
                "no artifact was written (report the model, or try another runtime)")
    return {"precision": precision, "tolerance": tol, "inputs_checked": n_random + 1, "outputs": worst,
            "device": sess.device, "runtime_config": sess.info.get("config", {})}
