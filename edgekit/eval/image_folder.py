"""image-folder: an image classifier on your images (`--data DIR`), against the model's own FP32 source.

Layout: torchvision's ImageFolder (DIR/<class>/<image>) gives labels; images directly in DIR give none (a folder
holding both is refused as ambiguous). Labels follow ImageFolder: class i is the i-th folder name in sorted order,
except that folders all named by integers ("0", "207", ...) take that integer, so a subset of ImageNet classes can
be named by index. Images (.jpg .jpeg .png .bmp .webp .gif, first frame) are read in sorted path order, converted
to RGB (or L for a 1-channel input), resized to the input's H x W (bilinear, no crop), scaled to [0, 1] and
normalised with `mean`/`std` (ImageNet's by default; set them to your training values, e.g. --set mean=[0.5]
--set std=[0.5]).

Metrics: top-1 agreement with the FP32 source (always) and mean logit cosine; with labels, accuracy of the model
and of the FP32 source (in "FP32"). The first output must be [batch, classes]; use --task npz for other outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ..errors import ConfigError
from ._generic import Ctx, check_finite, cosines

GENERIC = True
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
CHUNK = 32


class Config(BaseModel, extra="forbid"):
    """Preprocessing; the defaults are torchvision's ImageNet normalisation."""

    mean: list[float] = Field([0.485, 0.456, 0.406], description="per-channel mean after scaling to [0, 1]")
    std: list[float] = Field([0.229, 0.224, 0.225], description="per-channel std after scaling to [0, 1]")


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def list_images(root: Path) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """(image paths, labels or None, class names) in ImageFolder order."""
    if not root.is_dir():
        raise ConfigError(f"--data {root} is not a folder; --task image-folder reads DIR/<class>/<image> or "
                          "DIR/<image>")
    loose = _images(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _images(p))
    if loose and classes:
        raise ConfigError(f"--data {root} holds images both directly and in class folders; use one layout")
    if not loose and not classes:
        raise ConfigError(f"--data {root} holds no images ({', '.join(EXTENSIONS)})")
    if loose:
        return loose, None, []
    ids = [int(c) for c in classes] if all(c.isdigit() for c in classes) else list(range(len(classes)))
    paths, labels = [], []
    for c, i in zip(classes, ids):
        imgs = _images(root / c)
        paths += imgs
        labels += [i] * len(imgs)
    return paths, np.asarray(labels), classes


def preprocess(paths: list[Path], c: int, h: int, w: int, cfg: Config) -> np.ndarray:
    """Images -> float32 [N, C, H, W], normalised."""
    from PIL import Image

    mean = np.asarray(cfg.mean if len(cfg.mean) == c else cfg.mean[:1] * c, np.float32)[:, None, None]
    std = np.asarray(cfg.std if len(cfg.std) == c else cfg.std[:1] * c, np.float32)[:, None, None]
    out = np.empty((len(paths), c, h, w), np.float32)
    for k, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                a = np.asarray(im, np.float32) / 255.0
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ConfigError(f"cannot read image {p} ({type(e).__name__}: {e}); remove or fix it") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        out[k] = (a - mean) / std
    return out


def run(ctx: Ctx, cfg: Config) -> dict[str, Any]:
    """Top-1 agreement with the FP32 source, accuracy when the folder has class folders."""
    s = ctx.specs[0]
    if len(ctx.specs) != 1 or len(s.shape) != 4 or s.shape[1] not in (1, 3) or not s.dtype.startswith("float"):
        raise ConfigError(f"--task image-folder feeds one [N, 1|3, H, W] float image input; the model takes "
                          f"{[(x.name, x.shape, x.dtype) for x in ctx.specs]}; use --task npz")
    if min(len(cfg.mean), len(cfg.std)) < 1 or any(v <= 0 for v in cfg.std):
        raise ConfigError("--set mean/std need at least one value and positive std")
    paths, labels, classes = list_images(ctx.data)
    n = min(len(paths), ctx.limit or len(paths))
    pred, ref = ctx.predictor(), ctx.ref_predictor()
    outs, refs = [], []
    for i in range(0, n, CHUNK):
        x = {s.name: preprocess(paths[i:min(i + CHUNK, n)], s.shape[1], s.shape[2], s.shape[3], cfg)}
        outs.append(pred(x)[0])
        refs.append(ref(x)[0])
    o, r = np.concatenate(outs), np.concatenate(refs)
    check_finite(r, "the FP32 source")
    check_finite(o, "the model")
    if r.ndim != 2 or r.shape[1] < 2:
        raise ConfigError(f"the model's first output is {list(r.shape[1:])} per image, not class scores; use "
                          "--task npz for output fidelity")
    metrics = {"top1_agreement": float(np.mean(o.argmax(1) == r.argmax(1))), "cosine": float(cosines(r, o).mean())}
    reference: dict[str, float] = {}
    if labels is not None:
        if labels.max() >= r.shape[1]:
            raise ConfigError(f"{len(classes)} class folders (largest label {labels.max()}) but the model scores "
                              f"{r.shape[1]} classes; name the folders by class index or drop the folders")
        metrics["accuracy"] = float(np.mean(o.argmax(1) == labels[:n]))
        reference["accuracy"] = float(np.mean(r.argmax(1) == labels[:n]))
    return {"runtime": pred.runtime, "samples": n, "labels": labels is not None, "classes": len(classes),
            "metrics": metrics, "reference": reference}
