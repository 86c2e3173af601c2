"""text-embed: a text encoder on your sentences (`--data FILE`, one sentence per line), against its own FP32 source.

Each non-empty line is tokenised with the source folder's tokenizer (or --set tokenizer=FOLDER), padded/cut to the
input spec's sequence length (or to `max_len` when that axis is dynamic), and embedded one batch at a time. The
sentence embedding is the first output mean-pooled over the attention mask ([batch, tokens, hidden]), or the output
itself when it is already [batch, hidden].

Metrics: mean and minimum cosine of the model's embeddings to the FP32 source's, and retrieval top-1 agreement:
for each sentence, whether its nearest other sentence (by cosine) is the same under the model as under the FP32
source (needs 3+ sentences). The FP32 source's own retrieval is the reference by definition (1.0).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ..errors import ConfigError
from ._generic import Ctx, check_finite, cosines, token_feeds

GENERIC = True


class Config(BaseModel, extra="forbid"):
    """Tokenisation options."""

    max_len: int = Field(128, ge=2, le=8192, description="token cut-off when the sequence axis is dynamic")
    tokenizer: str | None = Field(None, description="folder with tokenizer files (default: the source folder)")


def read_lines(ctx: Ctx) -> list[str]:
    """Non-empty, stripped lines (first --limit)."""
    try:
        lines = [ln.strip() for ln in ctx.data.read_text(encoding="utf-8", errors="replace").splitlines()]
    except (OSError, IsADirectoryError) as e:
        raise ConfigError(f"--data {ctx.data} is not a readable text file ({e})") from None
    lines = [ln for ln in lines if ln][: ctx.limit or None]
    if len(lines) < 3:
        raise ConfigError(f"--data {ctx.data} has {len(lines)} non-empty lines; text-embed needs at least 3 "
                          "sentences, one per line")
    return lines


def pooled(out: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B, T, H] mean-pooled over the mask, or [B, H] as it is."""
    if out.ndim == 2:
        return out
    if out.ndim != 3 or out.shape[1] != mask.shape[1]:
        raise ConfigError(f"the model's first output is {list(out.shape)}; text-embed needs [batch, tokens, hidden] "
                          "or [batch, hidden]")
    m = mask[..., None].astype(np.float64)
    return (out * m).sum(1) / np.maximum(m.sum(1), 1.0)


def _nearest(e: np.ndarray) -> np.ndarray:
    """Index of each row's most similar other row by cosine."""
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def run(ctx: Ctx, cfg: Config) -> dict[str, Any]:
    """Cosine to FP32 embeddings and retrieval top-1 agreement on the user's sentences."""
    lines = read_lines(ctx)
    tok = ctx.tokenizer(cfg.tokenizer)
    if tok.pad_token is None:  # decoder tokenizers have none; the mask hides padding whatever its id
        tok.pad_token = tok.eos_token or tok.unk_token
    static = ctx.static(1)
    pred, ref = ctx.predictor(), ctx.ref_predictor()
    embs, refs = [], []
    step = ctx.batch
    for i in range(0, len(lines), step):
        enc = tok(lines[i:i + step], padding="max_length", truncation=True, max_length=static or cfg.max_len,
                  return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        feeds = token_feeds(ctx.names, ids, mask)
        embs.append(pooled(pred(feeds)[0], mask))
        refs.append(pooled(ref(feeds)[0], mask))
    e, r = np.concatenate(embs), np.concatenate(refs)
    check_finite(r, "the FP32 source")
    check_finite(e, "the model")
    cos = cosines(r, e)
    return {"runtime": pred.runtime, "samples": len(lines),
            "metrics": {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
                        "retrieval_top1_agreement": float(np.mean(_nearest(e) == _nearest(r)))},
            "reference": {}}
