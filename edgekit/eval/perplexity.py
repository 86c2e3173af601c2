"""perplexity: SmolLM2 next-token perplexity on two offline texts, and next-token agreement with FP32.

Texts: the stdlib's Python documentation topics (pydoc_data.topics, joined in sorted name order with blank lines)
and the GPL-3 licence (/usr/share/common-licenses/GPL-3). Each is tokenised once (no special tokens) and cut into
consecutive, non-overlapping windows of `window` tokens (512); every window is scored on its own, predicting tokens
2..window. Default subsample: the first 16 windows of the Python docs (8,192 tokens) and the first 8 of GPL-3
(4,096 tokens); `--limit N` keeps the first N windows of each. An artifact with a static sequence length sets the
window to that length.

Metrics per text: perplexity = exp(mean negative log-likelihood), and agreement of the argmax next token with
the FP32 model's (FP32 argmaxes and perplexity are cached, keyed by the sha256 of the GGUF file).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from ..errors import ConfigError
from ._common import Predictor, cached_arrays, make_predictor, ref_key

GPL3 = Path("/usr/share/common-licenses/GPL-3")
TEXTS = ("python_docs", "gpl3")


class Config(BaseModel, extra="forbid"):
    """Window length and counts; the defaults reproduce the reference figures."""

    window: int = Field(512, ge=8, le=8192, description="tokens per window")
    python_docs_windows: int = Field(16, ge=0, description="windows of Python-docs text")
    gpl3_windows: int = Field(8, ge=0, description="windows of GPL-3 text")
    python_docs_offset: int = Field(0, ge=0, description="skip this many Python-docs windows first (a held-out split "
                                    "for choosing options: e.g. 16 scores windows 16.. instead of the reported 0..15)")


def load_text(name: str) -> str:
    """The raw text of one evaluation corpus."""
    if name == "python_docs":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    if not GPL3.is_file():
        raise ConfigError(f"{GPL3} not found; it ships with Debian's base-files package")
    return GPL3.read_text(encoding="utf-8")


def windows(tok: Any, name: str, window: int, count: int, offset: int = 0) -> np.ndarray:
    """(count, window) int64 token windows, after skipping `offset` windows; fewer when the text runs out."""
    ids = np.asarray(tok(load_text(name), add_special_tokens=False)["input_ids"], dtype=np.int64)
    ids = ids[offset * window:]
    n = min(count, len(ids) // window)
    return ids[: n * window].reshape(n, window)


def _offset(cfg: Config, name: str) -> int:
    return cfg.python_docs_offset if name == "python_docs" else 0


def score(pred: Predictor, ids: np.ndarray) -> tuple[float, np.ndarray]:
    """(total NLL, argmax next tokens (N, window-1)) over windows, one window at a time to bound memory."""
    nll, top = 0.0, []
    for w in ids:
        logits = torch.from_numpy(pred({pred.input_names[0]: w[None]})[0][0]).float()
        lp = torch.log_softmax(logits[:-1], -1)
        target = torch.from_numpy(w[1:])
        nll -= float(lp.gather(1, target[:, None]).sum())
        top.append(logits[:-1].argmax(-1).numpy().astype(np.int32))
    return nll, (np.stack(top) if top else np.zeros((0, ids.shape[1] - 1), np.int32))


def _counts(cfg: Config) -> dict[str, int]:
    """Windows per text."""
    return {"python_docs": cfg.python_docs_windows, "gpl3": cfg.gpl3_windows}


def reference(cfg: Config, tok: Any) -> dict[str, np.ndarray]:
    """FP32 per-window NLL and argmax next tokens per text (cached)."""
    from ..models.real import CausalLMLogits, file_sha256, load_smollm2, smollm2_gguf

    def build() -> dict[str, np.ndarray]:
        pred = make_predictor(CausalLMLogits(load_smollm2()[0]), ["input_ids"], None, None, 1)
        out: dict[str, np.ndarray] = {}
        for name, count in _counts(cfg).items():
            ids = windows(tok, name, cfg.window, count, _offset(cfg, name))
            nlls, tops = [], []
            for w in ids:
                nll, top = score(pred, w[None])
                nlls.append(nll)
                tops.append(top[0])
            out[f"{name}_nll"] = np.asarray(nlls, np.float64)
            out[f"{name}_top"] = np.asarray(tops, np.int32).reshape(len(ids), cfg.window - 1)
        return out

    key = cfg.model_dump(exclude={"python_docs_offset"} if not cfg.python_docs_offset else None)  # old keys stay valid
    return cached_arrays("perplexity", ref_key(file_sha256(str(smollm2_gguf())), key, 1), build)


def run(model: Any, cfg: Config, runtime: str | None, limit: int | None, threads: int | None) -> dict[str, Any]:
    """Perplexity and FP32 next-token agreement per text (first `limit` windows of each if given)."""
    from torch import nn

    from ..models.real import CausalLMLogits, smollm2_tokenizer

    if isinstance(model, nn.Module) and not isinstance(model, CausalLMLogits) and hasattr(model, "generate"):
        model = CausalLMLogits(model).eval()  # a bare HF causal LM returns a dict; take its logits
    pred = make_predictor(model, ["input_ids"], runtime, threads, 1)
    static = pred.static_dim(pred.input_names[0], 1)
    if static is not None and static != cfg.window:
        cfg = cfg.model_copy(update={"window": static})
    tok = smollm2_tokenizer()
    ref = reference(cfg, tok)
    metrics: dict[str, float] = {}
    refm: dict[str, float] = {}
    total = 0
    for name, count in _counts(cfg).items():
        n = min(limit or count, count)
        ids = windows(tok, name, cfg.window, n, _offset(cfg, name))
        if not len(ids):
            continue
        nll, top = score(pred, ids)
        tokens = ids.shape[0] * (cfg.window - 1)
        total += ids.shape[0]
        metrics[f"perplexity_{name}"] = float(np.exp(nll / tokens))
        metrics[f"agreement_{name}"] = float(np.mean(top == ref[f"{name}_top"][: len(ids)]))
        refm[f"perplexity_{name}"] = float(np.exp(ref[f"{name}_nll"][: len(ids)].sum() / tokens))
    return {"runtime": pred.runtime, "samples": total, "window": cfg.window, "metrics": metrics, "reference": refm,
            "options": cfg.model_dump()}

