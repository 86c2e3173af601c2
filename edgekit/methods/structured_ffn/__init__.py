"""Structured FFN (Wei et al., NeurIPS 2024): LowRank / BlockDense / BlockShuffle FFN layers from pretrained weights.

Spec: shared/methods/structured_ffn.md. The FFN linears of every transformer block except the first
(`dense_first`) are replaced by structured layers initialised with the Frobenius-optimal projection of the
pretrained weight (truncated SVD per structure, `_structured.py`); optional recovery training (distillation from
the original model, or self-guided training with a dense guide decaying to zero) runs on local data.

How `param_ratio` maps to a structure (ratio = structured / dense parameters over one block's FFN weights):
* lowrank:      r = ratio · N·M/(N+M) per layer (the same r for d→d_ff and d_ff→d), rounded to `round_to`.
* blockdense:   K = `blocks` (default 2); one r per block, r = ratio · Σ N·M / Σ (M + N/K), rounded to a
                multiple of lcm(round_to, K).
* blockshuffle: K is the divisor of every layer's N and M (K ≥ 2) whose ratio Σ min(N,M)(N+M)/K / Σ N·M is
                nearest to the target (BERT d_ff = 4d: K=2 → 62.5%, K=4 → 31.25%).
* neurons:      structured width pruning, the baseline the paper's structures must beat: each block keeps
                round(ratio · d_ff) intermediate neurons (rounded to `round_to`), i.e. rows of up (and gate) and
                columns of down, as plain smaller nn.Linear layers; ratio = kept / d_ff exactly.
`rank` / `blocks` override the choice. The report gives the achieved ratio over the replaced layers and over
all FFN layers (the dense first block included), bias excluded.

Decisions: SwiGLU gate and up projections are structured separately (the paper fuses them into one d→2·d_ff
layer); the "first block" is the FFN with the smallest block index (first integer in the module name);
training keeps the model in eval mode (no dropout) and updates the structured layers (and guides) only unless
`train_scope="all"`. The SGT guide starts at the original dense W, so training starts at the dense model's
output (spec §8.7); guides are dropped afterwards, so the exported model holds factors only.
`neurons` ranks a block's intermediate neurons data-free, by the product of the neuron's row norms in up (and gate)
and its column norm in down (how much weight passes through it); data-aware neuron ranking is OPTIN's job
(`--method optin`). Its layers are plain Linears, so distillation works (`train_mode=distill`) but the dense-guide
SGT does not (refused).
"""
from __future__ import annotations

import math
import re
import time
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from ...errors import ConfigError, UnsupportedModelError
from ...flops import count_params
from . import factor as S
from ..common import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "training"  # only with train_steps > 0: see needs()
SUMMARY = "Structured FFN: low-rank / block-dense / block-shuffle FFN layers by optimal projection (+ recovery)"
MODELS = ("encoder", "decoder")


def needs(cfg: "Config") -> str:
    """Text only for recovery training (train_steps > 0); the projection itself is data-free."""
    return "training" if cfg.train_steps > 0 else "none"
DEFAULT_PATTERNS = [r"\.intermediate\.dense$", r"(?<!attention)\.output\.dense$",
                    r"\.mlp\.(gate_proj|up_proj|down_proj)$", r"\.mlp\.(fc1|fc2|c_fc|c_proj|dense_h_to_4h|dense_4h_to_h)$"]


class Config(BaseModel, extra="forbid"):
    """Options of the structured-FFN method."""

    kind: Literal["lowrank", "blockdense", "blockshuffle", "neurons"] = Field(
        "lowrank", description="structure of the FFN layers (neurons: fewer intermediate neurons, plain Linears)")
    param_ratio: float = Field(0.63, gt=0.0, le=1.0, description="target structured/dense FFN parameter ratio")
    rank: int | None = Field(None, ge=1, description="explicit rank r (lowrank, blockdense); overrides param_ratio")
    blocks: int | None = Field(None, ge=1, description="explicit block count K (blockdense default 2; blockshuffle)")
    round_to: int = Field(8, ge=1, description="round ranks to a multiple of this (runtimes like multiples of 8)")
    dense_first: int = Field(1, ge=0, description="number of leading blocks whose FFN stays dense (paper: 1)")
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS),
                                description="regexes of nn.Linear module names that are FFN layers")
    train_steps: int = Field(0, ge=0, description="recovery-training steps (0: projection only, no data needed)")
    train_mode: Literal["distill", "sgt"] = Field("distill", description="distill: plain; sgt: dense guide decays to 0")
    loss: Literal["auto", "mse", "kl", "lm"] = Field(
        "auto", description="auto: KL on causal-LM logits, else relative MSE to the original model's output")
    lr: float = Field(1e-4, gt=0.0, description="AdamW peak learning rate (10% warm-up, cosine to 0.1·lr)")
    batch: int = Field(8, ge=1, description="sequences (or samples) per step")
    seq_len: int = Field(128, ge=8, description="tokens per training sequence (texts are packed into windows)")
    sgt_ratio: float = Field(0.5, gt=0.0, le=1.0, description="SGT: guide active for the first ratio·steps steps")
    sgt_schedule: Literal["cosine", "linear"] = Field("cosine", description="SGT: decay of the guide weight α")
    reduce_flop: bool = Field(True, description="SGT: skip the guide with probability 1-α per layer and forward")
    train_scope: Literal["ffn", "all"] = Field("ffn", description="train the structured layers only, or all weights")
    tokenizer: str | None = Field(None, description="local tokenizer folder for text data (default: the model's)")
    seed: int = Field(0, description="seed of data order and SGT sampling")
    progress: bool = Field(True, description="show a progress bar during recovery training")
    device: str = Field("cpu", description="torch device for recovery training ('cuda' when available, 'auto' picks "
                        "it); the model comes back on the CPU")


def find_ffn(model: nn.Module, patterns: list[str]) -> list[tuple[str, nn.Linear, int]]:
    """(name, linear, block index) of every nn.Linear whose name matches a pattern, in module order."""
    regs = [re.compile(p) for p in patterns]
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and any(r.search(name) for r in regs):
            num = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
            out.append((name, mod, int(num.group(1)) if num else 0))
    return out


def _round(x: float, mult: int, lo: int, hi: int) -> int:
    """Nearest multiple of `mult` within [lo, hi] (lo/hi are multiples already or become the bound)."""
    r = max(mult, round(x / mult) * mult)
    return max(lo, min(hi, r))


def choose_sizes(kind: str, shapes: list[tuple[int, int]], cfg: Config) -> list[tuple[int, int]]:
    """(rank, blocks) per layer of one block from the ratio (or the explicit overrides)."""
    if kind == "lowrank":
        out = []
        for n, m in shapes:
            r = cfg.rank or _round(cfg.param_ratio * n * m / (n + m), cfg.round_to, 1, min(n, m))
            if r > min(n, m):
                raise ConfigError(f"rank {r} exceeds min(N, M) = {min(n, m)}; pick rank <= {min(n, m)}")
            out.append((r, 1))
        return out
    if kind == "blockdense":
        k = cfg.blocks or 2
        bad = [n for n, _ in shapes if n % k]
        if bad:
            raise ConfigError(f"blocks={k} does not divide the FFN input width {bad[0]}; pick a divisor of it")
        mult = math.lcm(cfg.round_to, k)
        cap = min(k * min(m, n // k) for n, m in shapes)  # r/K beyond min(M, N/K) adds nothing
        r = cfg.rank or _round(cfg.param_ratio * sum(n * m for n, m in shapes) / sum(m + n / k for n, m in shapes),
                               mult, k, max(cap, k))
        if r % k:
            raise ConfigError(f"rank {r} is not a multiple of blocks={k}; pick a multiple of {k}")
        return [(r, k)] * len(shapes)
    dense = sum(n * m for n, m in shapes)
    common = set(S.divisors(shapes[0][0]))
    for n, m in shapes:
        common &= set(S.divisors(n)) & set(S.divisors(m))
    if cfg.blocks is not None:
        if cfg.blocks not in common:
            raise ConfigError(f"blocks={cfg.blocks} must divide every FFN width; choose one of {sorted(common)}")
        return [(0, cfg.blocks)] * len(shapes)
    cands = [k for k in common if k >= 2] or [1]
    k = min(cands, key=lambda k: abs(sum(S.structured_params("blockshuffle", n, m, blocks=k)
                                         for n, m in shapes) / dense - cfg.param_ratio))
    return [(0, k)] * len(shapes)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _prune_neurons(group: list[tuple[str, nn.Linear]], cfg: Config) -> list[tuple[str, nn.Linear, torch.Tensor, dict]]:
    """One block's FFN with round(ratio·d_ff) intermediate neurons kept (by weight norms): (name, new Linear,
    original weight, report entry) per layer. The block's last linear (module order) is the down projection."""
    *ins, (dn, down) = group
    d_ff = down.in_features
    if not ins or any(lin.out_features != d_ff for _, lin in ins):
        shapes = [f"{n}: {lin.in_features}->{lin.out_features}" for n, lin in group]
        raise ConfigError(f"kind=neurons needs each block's FFN as up (and gate) d->d_ff then down d_ff->d, in module "
                          f"order; this block has {shapes}; fix --set patterns or use another kind")
    keep_n = cfg.rank or _round(cfg.param_ratio * d_ff, cfg.round_to, 1, d_ff)
    if keep_n > d_ff:
        raise ConfigError(f"rank {keep_n} exceeds the FFN width {d_ff}; pick rank <= {d_ff}")
    score = down.weight.detach().double().norm(dim=0)
    for _, lin in ins:
        score = score * lin.weight.detach().double().norm(dim=1)
    keep = score.topk(keep_n).indices.sort().values

    def sliced(lin: nn.Linear, rows: bool) -> tuple[nn.Linear, torch.Tensor, dict]:
        """`lin` keeping the kept neurons: its rows (up, gate) or its input columns (down; bias whole)."""
        w = lin.weight[keep] if rows else lin.weight[:, keep]
        new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None).to(lin.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            if lin.bias is not None:
                new.bias.copy_(lin.bias[keep] if rows else lin.bias)
        return new, lin.weight.detach().clone(), {"shape": [lin.out_features, lin.in_features], "neurons_kept": keep_n,
                                                  "params_dense": lin.weight.numel(), "params": new.weight.numel()}

    return [(n, *sliced(lin, True)) for n, lin in ins] + [(dn, *sliced(down, False))]


def apply(model: nn.Module, cfg: Config, data=None) -> tuple[nn.Module, MethodReport]:
    """Replace the FFN linears by projected structured layers; optionally train them back toward the original."""
    t0 = time.perf_counter()
    if cfg.kind == "neurons" and cfg.train_steps > 0 and cfg.train_mode == "sgt":
        raise ConfigError("kind=neurons has no dense guide for self-guided training; use --set train_mode=distill")
    if cfg.train_steps > 0 and (data is None or len(data) == 0):
        raise ConfigError(f"train_steps={cfg.train_steps} needs training data; pass --data FILE (.txt text or "
                          ".npy/.npz inputs), or set train_steps=0 for projection only")
    layers = find_ffn(model, cfg.patterns)
    if not layers:
        raise UnsupportedModelError("no FFN nn.Linear layers matched the patterns "
                                    f"{cfg.patterns}; pass --set patterns='[\"regex\", ...]' naming them")
    rep = MethodReport("structured_ffn", params_before=count_params(model))
    teacher = None
    if cfg.train_steps > 0:
        import copy

        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    blocks = sorted({b for _, _, b in layers})
    dense_blocks = set(blocks[:cfg.dense_first])
    per_layer: dict[str, dict] = {}
    replaced: list[tuple[str, S._Structured, torch.Tensor]] = []
    dense_total = struct_total = ffn_total = kept_dense = 0
    for b in blocks:
        group = [(n, lin) for n, lin, bb in layers if bb == b]
        ffn_total += sum(lin.weight.numel() for _, lin in group)
        if b in dense_blocks:
            for n, lin in group:
                rep.layers_skipped[n] = f"first block kept dense (dense_first={cfg.dense_first})"
                kept_dense += lin.weight.numel()
            continue
        if cfg.kind == "neurons":
            for n, new, w, info in _prune_neurons(group, cfg):
                per_layer[n] = info
                dense_total += w.numel()
                struct_total += info["params"]
                _set_module(model, n, new)
                replaced.append((n, new, w))
                rep.layers_touched.append(n)
            continue
        sizes = choose_sizes(cfg.kind, [(lin.in_features, lin.out_features) for _, lin in group], cfg)
        for (n, lin), (r, k) in zip(group, sizes):
            w = lin.weight.detach().clone()
            layer = S.make_layer(cfg.kind, lin, rank=r, blocks=k)
            err = float((layer.dense_weight().double() - w.double()).norm() / w.double().norm().clamp(min=1e-30))
            fp = S.structured_params(cfg.kind, lin.in_features, lin.out_features, r, k)
            per_layer[n] = {"shape": [lin.out_features, lin.in_features], "rank": r or None, "blocks": k,
                            "params_dense": w.numel(), "params": fp, "rel_error": round(err, 6)}
            dense_total += w.numel()
            struct_total += fp
            _set_module(model, n, layer)
            replaced.append((n, layer, w))
            rep.layers_touched.append(n)
    if not replaced:
        raise ConfigError(f"every matched FFN layer is in the first {cfg.dense_first} block(s); lower dense_first")
    rep.extra.update({
        "kind": cfg.kind, "ratio_target": cfg.param_ratio,
        "ratio_replaced": round(struct_total / dense_total, 6),
        "ratio_all_ffn": round((struct_total + kept_dense) / ffn_total, 6),
        "ffn_params_dense": ffn_total, "ffn_params_after": struct_total + kept_dense,
        "ffn_macs_per_token_dense": ffn_total, "ffn_macs_per_token_after": struct_total + kept_dense,
        "layers": per_layer})
    rep.export_precision = "fp32"
    if cfg.train_steps > 0:
        from .train import recover

        rep.extra["training"] = recover(model, teacher, replaced, data, cfg)
    rep.params_after = count_params(model)
    rep.seconds = time.perf_counter() - t0
    return model.eval(), rep
