"""Plumbing of the data-driven tasks (image-folder, text-embed, perplexity-file, npz): what they evaluate, the FP32
reference they compare with, and shared figures.

The FP32 reference is the model's own source: for an artifact, the source its manifest records, re-loaded and
checked against the recorded checksum (edgekit.source.reload_source); for a model source given directly, that
model itself (or `--reference`). It runs in torch on exactly the arrays the evaluated model gets, so every figure
is a comparison on the same inputs. Never a built-in model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..model_io import InputSpec, LoadedModel, SourceOptions
from ._common import Predictor, make_predictor, torch_predictor


@dataclass
class Ctx:
    """What a generic task needs: the model (nn.Module or artifact folder), its FP32 reference, input specs, data."""

    model: Any
    reference: LoadedModel
    specs: list[InputSpec]
    data: Path
    runtime: str | None = None
    limit: int | None = None
    threads: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def batch(self) -> int:
        return self.specs[0].shape[0] if self.specs and self.specs[0].shape else 1

    def predictor(self) -> Predictor:
        """The evaluated model: an artifact through its runtime export, a module in torch."""
        return make_predictor(self.model, self.names, self.runtime, self.threads, self.batch)

    def ref_predictor(self) -> Predictor:
        """The FP32 source in torch, fed exactly what the model gets."""
        return torch_predictor(self.reference.module, self.names, self.batch, self.threads)

    def static(self, axis: int) -> int | None:
        """Fixed size of the first input's axis from the spec (None when that axis is dynamic)."""
        s = self.specs[0]
        return None if axis in s.dynamic or axis >= len(s.shape) else s.shape[axis]

    def tokenizer(self, path: str | None = None) -> Any:
        """The tokenizer of the source's Hugging Face folder (or `path`), local files only, never remote code."""
        where = Path(path) if path else (Path(self.reference.source) if self.reference.kind == "huggingface" else None)
        if where is None or not where.is_dir():
            raise ConfigError("this task tokenizes text, and the model's source is not a Hugging Face folder; pass "
                              "--set tokenizer=FOLDER (a folder with the tokenizer files)")
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(where), local_files_only=True, trust_remote_code=False)
        except Exception as e:  # no tokenizer files, or unreadable ones
            raise ConfigError(f"no usable tokenizer in {where} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                              "save it there with tokenizer.save_pretrained, or pass --set tokenizer=FOLDER") from None


def build_ctx(model: Any, data: Any, source: SourceOptions | None, reference: Any, runtime: str | None,
              limit: int | None, threads: int | None) -> Ctx:
    """Resolve the evaluated model, its specs and its FP32 reference (see the module docstring)."""
    from ..api import resolve_specs
    from ..artifact import is_artifact, read_manifest
    from ..source import reload_source

    source = source or SourceOptions()
    if data is None or not Path(data).exists():
        raise ConfigError(f"this task reads your data; pass --data {'PATH' if data is None else data} (it must exist)")
    if isinstance(model, nn.Module):
        if reference is None:
            raise ConfigError("pass the FP32 reference model (reference=...) to evaluate a module")
        ref = reference if isinstance(reference, LoadedModel) else source.load(reference)
        return Ctx(model, ref, resolve_specs(ref, source.input_shape), Path(data), runtime, limit, threads)
    if is_artifact(Path(model)):
        man = read_manifest(Path(model))
        ref = reload_source(man.get("source"), source, reference)
        specs = [InputSpec(i["name"], list(i["shape"]), i.get("dtype", "float32"),
                           {int(k): str(v) for k, v in (i.get("dynamic") or {}).items()}, i.get("high"))
                 for i in man["inputs"]]
        if "decoder" in man:  # a KV-cache decoder is scored as a full-sequence model (eval._common, one prefill)
            specs = [s for s in specs if s.name == "input_ids"]
            specs[0].dynamic = {0: "batch", 1: "sequence_length"}
        return Ctx(Path(model), ref, specs, Path(data), runtime, limit, threads,
                   {"reference": ref.source, "reference_kind": ref.kind})
    if runtime not in (None, "torch"):
        raise ConfigError(f"--runtime {runtime} needs an artifact folder; a model source runs in torch")
    loaded = source.load(model)
    ref = source.load(reference) if reference is not None else loaded
    return Ctx(loaded.module, ref, resolve_specs(loaded, source.input_shape, source.dynamic), Path(data), runtime,
               limit, threads, {"reference": ref.source if reference is not None else "the model itself (FP32)"})


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per sample (rows of axis 0, flattened)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Relative L2 error per sample of `b` against the reference `a`."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-12)


def token_feeds(names: list[str], ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds for a token model by input name: input_ids, attention_mask, token_type_ids (zeros); other names by
    position (ids first, then mask)."""
    known = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    if len(names) > 3:
        raise ConfigError(f"the model takes {len(names)} inputs {names}; a text task feeds token ids and a mask")
    by_pos = [ids, mask, np.zeros_like(ids)]
    return {n: known.get(n, by_pos[i]) for i, n in enumerate(names)}


def check_finite(x: np.ndarray, who: str) -> None:
    """NaN/Inf outputs make every figure meaningless: say so instead of printing nan."""
    if not np.isfinite(x).all():
        raise ConfigError(f"{who} produced NaN/Inf outputs on this data; the model is broken for these inputs")
