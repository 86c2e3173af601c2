"""perplexity-file: a causal LM on your text (`--data FILE`), against its own FP32 source.

The whole file is tokenised once (no special tokens) with the source folder's tokenizer (or --set tokenizer=FOLDER)
and cut into consecutive, non-overlapping windows of the input spec's sequence length (or `window` when that axis
is dynamic); each window is scored on its own, predicting tokens 2..window. At most `windows` windows (16), or
--limit N.

Metrics: perplexity = exp(mean negative log-likelihood) of the model and of the FP32 source ("FP32"), their
ratio, and next-token agreement (argmax) with the FP32 source.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from ..errors import ConfigError
from ._common import Predictor
from ._generic import Ctx, check_finite, token_feeds

GENERIC = True


class Config(BaseModel, extra="forbid"):
    """Window sizes."""

    windows: int = Field(16, ge=1, le=4096, description="most windows scored")
    window: int = Field(512, ge=8, le=8192, description="tokens per window when the sequence axis is dynamic")
    tokenizer: str | None = Field(None, description="folder with tokenizer files (default: the source folder)")


def _score(pred: Predictor, names: list[str], ids: np.ndarray, who: str) -> tuple[float, np.ndarray]:
    """(total NLL, argmax next tokens [N, T-1]) one window at a time."""
    nll, top = 0.0, []
    for w in ids:
        logits = pred(token_feeds(names, w[None], np.ones_like(w[None])))[0]
        if logits.ndim != 3 or logits.shape[1] != len(w):
            raise ConfigError(f"{who} returns {list(logits.shape)}; perplexity-file needs causal-LM logits "
                              "[batch, tokens, vocab]")
        check_finite(logits, who)
        lp = torch.log_softmax(torch.from_numpy(logits[0, :-1]).double(), -1)
        nll -= float(lp.gather(1, torch.from_numpy(w[1:])[:, None]).sum())
        top.append(logits[0, :-1].argmax(-1))
    return nll, np.stack(top)


def run(ctx: Ctx, cfg: Config) -> dict[str, Any]:
    """Perplexity of the model and its FP32 source, and next-token agreement, on the user's text."""
    try:
        text = ctx.data.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"--data {ctx.data} is not a readable text file ({e})") from None
    tok = ctx.tokenizer(cfg.tokenizer)
    window = ctx.static(1) or cfg.window
    ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    n = min(cfg.windows, ctx.limit or cfg.windows, len(ids) // window)
    if n < 1:
        raise ConfigError(f"--data {ctx.data} has {len(ids)} tokens, fewer than one window of {window}; pass more "
                          "text (or a model exported with a shorter --input-shape)")
    ids = ids[: n * window].reshape(n, window)
    pred = ctx.predictor()
    nll, top = _score(pred, ctx.names, ids, "the model")
    rnll, rtop = _score(ctx.ref_predictor(), ctx.names, ids, "the FP32 source")
    tokens = n * (window - 1)
    ppl, rppl = float(np.exp(nll / tokens)), float(np.exp(rnll / tokens))
    return {"runtime": pred.runtime, "samples": n, "window": window,
            "metrics": {"perplexity": ppl, "perplexity_ratio": ppl / rppl,
                        "next_token_agreement": float(np.mean(top == rtop))},
            "reference": {"perplexity": rppl}}
