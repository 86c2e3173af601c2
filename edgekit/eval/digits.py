"""digits: the bundled demo CNN on the held-out 25% of scikit-learn's 8x8 digits (450 images, the whole split).

Metrics: accuracy, and top-1 agreement with the FP32 demo model's predictions (cached, keyed by the sha256 of the
bundled weights). Input (N, 1, 8, 8) float32, images / 16.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from ._common import agreement, cached_arrays, feeds_for, make_predictor, ref_key


class Config(BaseModel, extra="forbid"):
    """No options: the split is fixed by the demo model."""

    seed: int = 0  # split seed; must match the one the demo model was trained with


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Test images and labels as numpy."""
    from ..models.digits_cnn import digits_split

    _, _, x, y = digits_split(seed)
    return x.numpy().astype(np.float32), y.numpy()


def reference(cfg: Config) -> dict[str, np.ndarray]:
    """FP32 predictions of the bundled demo model on the test split (cached)."""
    from ..models.digits_cnn import WEIGHTS, load_demo_model
    from ..models.real import file_sha256

    def build() -> dict[str, np.ndarray]:
        x, _ = _data(cfg.seed)
        pred = make_predictor(load_demo_model(), ["input"], None, None, 256)
        return {"pred": pred({"input": x})[0].argmax(1)}

    return cached_arrays("digits", ref_key(file_sha256(str(WEIGHTS)), cfg.model_dump(), 1), build)


def run(model: Any, cfg: Config, runtime: str | None, limit: int | None, threads: int | None) -> dict[str, Any]:
    """Accuracy and FP32 agreement on the test split (first `limit` images if given)."""
    x, y = _data(cfg.seed)
    ref = reference(cfg)["pred"]
    n = min(limit or len(x), len(x))
    pred = make_predictor(model, ["input"], runtime, threads, 256)
    out = pred(feeds_for(pred, [x[:n]]))[0].argmax(1)
    return {"runtime": pred.runtime, "samples": n,
            "metrics": {"accuracy": float(np.mean(out == y[:n])), "agreement": agreement(out, ref[:n])},
            "reference": {"accuracy": float(np.mean(ref[:n] == y[:n]))}}
