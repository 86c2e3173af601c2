"""fashion-probe: EfficientNet-Lite0 features as a Fashion-MNIST linear probe, plus ImageNet top-1 agreement.

Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, IDX files). Default subsample: 2,000
train and 1,000 test images drawn with a seeded generator (seed 0), grey replicated to RGB, bilinearly resized to
224 px (option `px`; smaller is faster), scaled (pixel - 127) / 128.

The probe head (standardise + logistic regression) is fitted once on the FP32 model's pooled 1280-d features of
the train images and then kept fixed; a compressed model is scored by the head's accuracy on *its* test features,
and by top-1 agreement of its 1000 ImageNet logits with the FP32 logits.

Where features come from: a torch module with `extract_features` (EfficientNet and compressed copies of it) or
one returning (logits, features) — `EfficientNetWithFeatures`, which is what to export — gives features directly.
An artifact with a second output reads that output as features. An artifact with logits only is scored by a
second fixed head fitted on the FP32 *logits* of the same train images (`probe_on: logits` in the result); that
figure is lower than the feature probe and is compared with its own FP32 reference.
"""
from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..errors import ConfigError
from ._common import (
    Predictor,
    agreement,
    apply_probe,
    cached_arrays,
    fit_probe,
    make_predictor,
    ref_key,
)

DATA = Path("/usr/share/datasets/fashion-mnist")
CHUNK = 64


class Config(BaseModel, extra="forbid"):
    """Sizes of the probe; the defaults reproduce the reference figures."""

    px: int = Field(224, ge=32, le=512, description="image side after resizing (EfficientNet-Lite0 uses 224)")
    n_train: int = Field(2000, ge=20, le=60000, description="train images for the FP32 probe head")
    n_test: int = Field(1000, ge=1, le=10000, description="test images scored")
    seed: int = Field(0, description="sampling seed")
    batch: int = Field(32, ge=1, description="torch batch size")


def _idx(name: str, offset: int) -> np.ndarray:
    """Read one gzip'd IDX file as uint8, skipping its header."""
    p = DATA / name
    if not p.is_file():
        raise ConfigError(f"{p} not found; install the data with: apt-get install -y dataset-fashion-mnist")
    with gzip.open(p, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_split(cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (x_train, y_train, x_test, y_test) subsample as 28x28 uint8 images and int labels."""
    xtr = _idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    ytr = _idx("train-labels-idx1-ubyte.gz", 8)
    xte = _idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    yte = _idx("t10k-labels-idx1-ubyte.gz", 8)
    rng = np.random.default_rng(cfg.seed)
    tr = rng.choice(len(xtr), cfg.n_train, replace=False)
    te = rng.choice(len(xte), cfg.n_test, replace=False)
    return xtr[tr], ytr[tr].astype(np.int64), xte[te], yte[te].astype(np.int64)


def preprocess(x: np.ndarray, px: int) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 3, px, px) with (pixel - 127) / 128, as EfficientNet-Lite expects."""
    t = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
    t = F.interpolate(t, size=(px, px), mode="bilinear", align_corners=False)
    return ((t - 127.0) / 128.0).expand(-1, 3, -1, -1).contiguous().numpy()


def _chunks(x: np.ndarray, px: int) -> Iterator[np.ndarray]:
    """Preprocessed images a few at a time (3,000 images at 224 px would need 1.8 GB at once)."""
    for s in range(0, len(x), CHUNK):
        yield preprocess(x[s:s + CHUNK], px)


def _outputs(pred: Predictor, x: np.ndarray, px: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, features or None) for all images."""
    logits, feats = [], []
    for c in _chunks(x, px):
        out = pred({pred.input_names[0]: c})
        logits.append(out[0])
        if len(out) > 1:
            feats.append(out[1].reshape(len(c), -1))
    return np.concatenate(logits), (np.concatenate(feats) if feats else None)


def _wrap(model: Any) -> Any:
    """Give a torch EfficientNet a (logits, features) forward; leave artifacts and other modules alone."""
    from torch import nn

    from ..models.real import EfficientNetWithFeatures

    if isinstance(model, nn.Module) and hasattr(model, "extract_features") and hasattr(model, "_fc"):
        return EfficientNetWithFeatures(model).eval()
    return model


def reference(cfg: Config) -> dict[str, np.ndarray]:
    """FP32 probe heads (on features, on logits), test logits argmax and test predictions (cached)."""
    from ..models.real import efficientnet_weights, file_sha256, load_efficientnet_lite0

    def build() -> dict[str, np.ndarray]:
        xtr, ytr, xte, _ = load_split(cfg)
        pred = make_predictor(_wrap(load_efficientnet_lite0()), ["input"], None, None, cfg.batch)
        ltr, ftr = _outputs(pred, xtr, cfg.px)
        lte, fte = _outputs(pred, xte, cfg.px)
        head = fit_probe(ftr, ytr, cfg.seed)
        lhead = {f"lg_{k}": v for k, v in fit_probe(ltr, ytr, cfg.seed).items()}
        return {**head, **lhead, "top1": lte.argmax(1), "pred": apply_probe(head, fte),
                "lg_pred": apply_probe(lhead, lte, "lg_")}

    key = ref_key(file_sha256(str(efficientnet_weights())), cfg.model_dump(exclude={"batch"}), 1)
    return cached_arrays("fashion-probe", key, build)


def run(model: Any, cfg: Config, runtime: str | None, limit: int | None, threads: int | None) -> dict[str, Any]:
    """Probe accuracy and ImageNet top-1 agreement with FP32 on the test subsample (first `limit` if given)."""
    pred = make_predictor(_wrap(model), ["input"], runtime, threads, cfg.batch)
    px = pred.static_dim(pred.input_names[0], 2)
    if px is not None and px != cfg.px:
        cfg = cfg.model_copy(update={"px": px})  # a static-shape artifact fixes the image size
    ref = reference(cfg)
    _, _, xte, yte = load_split(cfg)
    n = min(limit or len(xte), len(xte))
    logits, feats = _outputs(pred, xte[:n], cfg.px)
    on = "features" if feats is not None else "logits"
    labels = apply_probe(ref, feats) if feats is not None else apply_probe(ref, logits, "lg_")
    ref_pred = ref["pred"] if feats is not None else ref["lg_pred"]
    return {"runtime": pred.runtime, "samples": n, "probe_on": on, "options": cfg.model_dump(),
            "metrics": {"probe_accuracy": float(np.mean(labels == yte[:n])),
                        "top1_agreement": agreement(logits.argmax(1), ref["top1"][:n]),
                        "probe_agreement": agreement(labels, ref_pred[:n])},
            "reference": {"probe_accuracy": float(np.mean(ref_pred[:n] == yte[:n]))}}
