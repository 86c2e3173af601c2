"""Validate KV-cache generation against transformers' own greedy `generate` (fail closed).

The reference is the (compressed) torch model's `generate(do_sample=False)` on a fixed prompt: its new tokens and its
raw logits per step. Each runtime path must give the same tokens (stopping at the same eos, if any); the numpy loops
must also give logits within the precision's tolerance at every step (export.validate's figures: max abs error
relative to the logits' RMS, relative L2, cosine), and their decode steps must feed one token with the cache
holding every earlier position. The runtimes' own stacks (onnxruntime-genai, openvino-genai) expose no logits; their
tokens must match. A stack that is not installed, or fails to load, is recorded with the reason (not a mismatch).

Int8 activations (`--deploy int8`: MatMulNBits accuracy_level 4 on ONNX Runtime, dynamic quantization on OpenVINO)
change every logit a little, so greedy tokens cannot be asked to match: `check_act8` feeds transformers' own tokens
(teacher forcing: the prompt as one prefill, then one reference token per step on the cache) and judges each step's
logits against the reference's at task level, with stated floors (ACT8_FLOORS): next-token top-1 agreement and the
worst logit cosine. A form below either floor is refused (no artifact).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ExportMismatchError
from ..export.validate import TOLERANCES, check_finite, compare
from .loop import Greedy, greedy, open_decoder

PROMPT = "The capital of France is"
NEW_TOKENS = 20
# int8 activations: at least 90% of the steps keep transformers' next token, and no step's logits fall below cosine
# 0.98 (a 25%-wrong export reads far lower); measured on SmolLM2 RTN W4 g32 + 8-bit head: see the README
ACT8_FLOORS = {"top1_agreement": 0.9, "cosine_min": 0.98}


def reference(lm: nn.Module, prompt: Sequence[int], new_tokens: int, eos: Sequence[int]) -> Greedy:
    """transformers' greedy generate: new tokens and raw logits per step."""
    ids = torch.tensor([list(prompt)], dtype=torch.long)
    with torch.no_grad():
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                          num_beams=1, eos_token_id=list(eos) or None, pad_token_id=(list(eos) or [0])[0],
                          output_logits=True, return_dict_in_generate=True, temperature=None, top_p=None,
                          top_k=None)
    toks = [int(t) for t in out.sequences[0, ids.shape[1]:]]
    logits = [lg[0].float().numpy() for lg in out.logits][: len(toks)]
    return Greedy(toks, [], logits, stopped_at_eos=bool(toks and toks[-1] in eos))


def _first_diff(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def match_tokens(ref: Greedy, got: Greedy, what: str, against: str = "transformers' generate") -> dict[str, Any]:
    """Token-for-token equality with the reference, or ExportMismatchError naming the first differing step."""
    if got.tokens != ref.tokens:
        i = _first_diff(ref.tokens, got.tokens)
        raise ExportMismatchError(f"{what}: greedy tokens differ from {against} at new token {i} "
                                  f"({against.split()[0]} {ref.tokens[i:i + 3]}, {what} {got.tokens[i:i + 3]}); no "
                                  "artifact was written")
    return {"greedy_match": True, "new_tokens": len(got.tokens), "stopped_at_eos": ref.stopped_at_eos}


def _cache_use(calls: list[tuple[int, int]], prompt_len: int) -> dict[str, Any]:
    """Prefill fed the prompt with an empty cache; every decode step fed 1 token with all earlier positions cached."""
    ok = bool(calls) and calls[0] == (prompt_len, 0) and all(
        c == (1, prompt_len + k) for k, c in enumerate(calls[1:]))
    return {"prefill": list(calls[0]) if calls else None, "decode_steps": len(calls) - 1,
            "decode_tokens_per_call": sorted({c[0] for c in calls[1:]}), "past_lengths": [c[1] for c in calls],
            "ok": ok}


def check_loop(path: Path, runtime: str, info: dict, prompt: Sequence[int], ref: Greedy, precision: str,
               config: dict[str, str] | None = None) -> dict[str, Any]:
    """Numpy greedy loop over `path` in `runtime`: tokens equal, logits within tolerance at every step, cache used."""
    what = f"{runtime} ({Path(path).name}, numpy greedy loop)"
    dec = open_decoder(path, runtime, info, config=config)
    got = greedy(dec, prompt, len(ref.tokens), ref.tokens[-1:] if ref.stopped_at_eos else (), keep_logits=True)
    for k, lg in enumerate(got.logits):
        check_finite(lg, f"{what} logits at new token {k}")
    res = match_tokens(ref, got, what)
    tol = TOLERANCES[precision if precision in TOLERANCES else "int"]
    worst: dict[str, float] = {}
    for r, g in zip(ref.logits, got.logits):
        f = compare(r[None], g[None])
        for k in ("max_abs", "max_abs_scaled", "rel_l2"):
            worst[k] = max(worst.get(k, 0.0), f[k])
        worst["cosine"] = min(worst.get("cosine", 1.0), f["cosine"])
    if worst and (worst["max_abs_scaled"] > tol["max_abs"] or worst["rel_l2"] > tol["rel_l2"]
                  or worst["cosine"] < tol["cosine"]):
        raise ExportMismatchError(f"{what}: logits differ from transformers beyond the {precision} tolerance at some "
                                  f"step (worst max_abs scaled {worst['max_abs_scaled']:.3g}, rel_l2 "
                                  f"{worst['rel_l2']:.3g}, cosine {worst['cosine']:.6f}); no artifact was written")
    cache = _cache_use(dec.calls, len(prompt))
    if not cache["ok"]:
        raise ExportMismatchError(f"{what}: the loop did not use the KV cache as expected ({cache}); no artifact "
                                  "was written")
    return {**res, "precision": precision, "tolerance": tol, "outputs": {"logits": worst}, "steps_compared":
            len(got.logits), "cache": cache, "runtime_config": dict(config or {})}


def check_stack(run: Callable[[], Greedy], ref: Greedy, what: str, why_differ: str = "",
                against: str = "transformers' generate") -> dict[str, Any]:
    """A runtime's own generation stack: status "ok" when its tokens equal the reference's (transformers', or for an
    int8-activation file the numpy loop's on the same file: `against` names it); else the status says why
    (package missing, files it cannot load, tokens that differ) and `edgekit generate` uses the validated numpy loop
    instead. The artifact stays valid: its files passed the numpy loop's token and logit checks."""
    from ..errors import MissingDependencyError

    try:
        got = run()
    except MissingDependencyError as e:
        return {"status": "unavailable", "reason": str(e)}
    except Exception as e:  # a stack that cannot load our files: recorded, generation falls back to the numpy loop
        return {"status": "failed to run", "reason": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
    try:
        return {"status": "ok", "reference": against, **match_tokens(ref, got, what, against)}
    except ExportMismatchError as e:
        return {"status": "tokens differ", "reason": str(e).split("; no artifact")[0] + (f" ({why_differ})"
                                                                                         if why_differ else "")}


def check_act8(path: Path, runtime: str, info: dict, prompt: Sequence[int], ref: Greedy,
               config: dict[str, str] | None = None) -> dict[str, Any]:
    """An int8-activation decoder, teacher-forced on transformers' tokens: next-token agreement and logit cosine per
    step against the reference, above ACT8_FLOORS; the cache must be used as in check_loop."""
    what = f"{runtime} ({Path(path).name}, int8 activations, teacher-forced)"
    dec = open_decoder(path, runtime, info, config=config)
    dec.reset()
    got = [dec.step(list(prompt))]
    for t in ref.tokens[:-1]:
        got.append(dec.step([t]))
    cos, top, worst_abs = [], [], 0.0
    for k, (r, g) in enumerate(zip(ref.logits, got)):
        check_finite(g, f"{what} logits at new token {k}")
        f = compare(r[None], g[None])
        cos.append(f["cosine"])
        worst_abs = max(worst_abs, f["max_abs"])
        top.append(int(np.argmax(r)) == int(np.argmax(g)))
    figs = {"top1_agreement": float(np.mean(top)), "cosine_min": float(min(cos)), "cosine_mean": float(np.mean(cos))}
    cache = _cache_use(dec.calls, len(prompt))
    if not cache["ok"]:
        raise ExportMismatchError(f"{what}: the loop did not use the KV cache as expected ({cache}); no artifact "
                                  "was written")
    low = [f"{k} {figs[k]:.4f} < {v}" for k, v in ACT8_FLOORS.items() if figs[k] < v]
    if low:
        raise ExportMismatchError(f"{what}: int8 activations move the logits too far from transformers' ({'; '.join(low)}"
                                  f" over {len(top)} steps); no artifact was written. Deploy the weights-only form "
                                  "(drop --deploy int8)")
    return {"check": "teacher-forced on transformers' greedy tokens", "precision": "int8 activations (dynamic)",
            "floors": dict(ACT8_FLOORS), **figs, "steps_compared": len(top), "new_tokens": len(ref.tokens),
            "outputs": {"logits": {"max_abs": worst_abs, "cosine": figs["cosine_min"],
                                   "top1_agreement": figs["top1_agreement"]}},
            "cache": cache, "runtime_config": dict(config or {})}
