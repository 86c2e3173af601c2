"""Attention-head / FFN-neuron plumbing for HF encoders (BERT-style) and decoders (Llama-style, GQA).

Shared by OPTIN and the magnitude baseline: find the blocks of a model, the MAC model of the spec (PTF formulas),
masks as forward pre-hooks (a masked unit's input to the output projection is zeroed) and physical slimming
(sliced q/k/v/o and FFN matrices, module attributes and config updated). An attention *unit* is one head for
multi-head attention and one whole key/value group (its `q_per_unit` query heads + its k and v heads) for
grouped-query attention: keeping every group's query count equal keeps `repeat_kv` valid, so the slimmed layer
runs in stock transformers code. Only torch is imported here (the scorer also runs on a bare GPU machine).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Arch:
    """The transformer inside a model: family, its blocks and dims, and the task head (if any) after it."""

    family: str                       # "bert" (post-LN encoder) or "llama" (pre-norm gated decoder)
    backbone: nn.Module               # BertModel / LlamaModel
    layers: list[nn.Module]
    hidden: int
    head_dim: int
    q_per_unit: int                   # query heads per attention unit (1 = MHA, n_rep = GQA group)
    lm_head: nn.Module | None = None  # Llama: LlamaForCausalLM.lm_head
    classifier: nn.Module | None = None  # BERT: *ForSequenceClassification.classifier (uses the pooler)
    extra: dict = field(default_factory=dict)

    def q(self, l: int) -> nn.Linear:
        """Query projection of layer l."""
        m = self.layers[l]
        return m.attention.self.query if self.family == "bert" else m.self_attn.q_proj

    def kv(self, l: int) -> tuple[nn.Linear, nn.Linear]:
        """Key and value projections of layer l."""
        m = self.layers[l]
        return (m.attention.self.key, m.attention.self.value) if self.family == "bert" else \
            (m.self_attn.k_proj, m.self_attn.v_proj)

    def o(self, l: int) -> nn.Linear:
        """Attention output projection of layer l (its input is the per-head context)."""
        m = self.layers[l]
        return m.attention.output.dense if self.family == "bert" else m.self_attn.o_proj

    def ups(self, l: int) -> list[nn.Linear]:
        """FFN input projections (BERT: intermediate.dense; Llama: gate_proj and up_proj)."""
        m = self.layers[l]
        return [m.intermediate.dense] if self.family == "bert" else [m.mlp.gate_proj, m.mlp.up_proj]

    def down(self, l: int) -> nn.Linear:
        """FFN output projection of layer l: the spec's hook point F_l and the neuron mask point."""
        m = self.layers[l]
        return m.output.dense if self.family == "bert" else m.mlp.down_proj

    def units(self, l: int) -> int:
        """Attention units (heads or kv groups) currently in layer l (0 once emptied)."""
        if _empty_attn(self, l):
            return 0
        return self.q(l).out_features // (self.head_dim * self.q_per_unit)

    def neurons(self, l: int) -> int:
        """FFN neurons currently in layer l."""
        return 0 if _empty_ffn(self, l) else self.down(l).in_features


def find_arch(model: nn.Module) -> Arch | None:
    """Locate a BERT-style or Llama-style backbone inside any wrapper; None when there is none."""
    for m in model.modules():
        enc = getattr(m, "encoder", None)
        if hasattr(m, "embeddings") and enc is not None and hasattr(enc, "layer"):
            cfg = m.config
            dh = cfg.hidden_size // cfg.num_attention_heads
            arch = Arch("bert", m, list(enc.layer), cfg.hidden_size, dh, 1)
            for p in model.modules():
                if getattr(p, "bert", None) is m and hasattr(p, "classifier") and m.pooler is not None:
                    arch.classifier = p.classifier
            return arch
        if hasattr(m, "layers") and hasattr(m, "rotary_emb") and hasattr(m, "embed_tokens"):
            cfg = m.config
            dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            rep = cfg.num_attention_heads // cfg.num_key_value_heads
            arch = Arch("llama", m, list(m.layers), cfg.hidden_size, dh, rep)
            for p in model.modules():
                if getattr(p, "model", None) is m and hasattr(p, "lm_head"):
                    arch.lm_head = p.lm_head
            return arch
    return None


# ---------------------------------------------------------------- MAC model (spec §3)
def mac_unit(arch: Arch, s: float) -> tuple[float, float]:
    """(MACs of one attention unit, MACs of one FFN neuron) at sequence length s.

    MHA head: 3·s·d·d_h (q, k, v) + 2·s²·d_h (QKᵀ, AV) + s·d_h·d (output) — the spec's formula. A GQA group of
    r query heads: (r + 2)·s·d·d_h + 2·r·s²·d_h + r·s·d_h·d. Neuron: 2·s·d, or 3·s·d with a gated (SwiGLU) FFN.
    """
    d, dh, r = arch.hidden, arch.head_dim, arch.q_per_unit
    head = (r + 2) * s * d * dh + 2 * r * s * s * dh + r * s * dh * d
    neuron = (3 if arch.family == "llama" else 2) * s * d
    return float(head), float(neuron)


def macs(arch: Arch, s: float, heads: list[int] | None = None, neurons: list[int] | None = None) -> float:
    """Total MACs of the prunable parts for per-layer unit counts (default: the model's current shapes)."""
    mh, mn = mac_unit(arch, s)
    L = len(arch.layers)
    heads = heads if heads is not None else [arch.units(l) for l in range(L)]
    neurons = neurons if neurons is not None else [arch.neurons(l) for l in range(L)]
    return sum(h * mh + n * mn for h, n in zip(heads, neurons))


def search(head_scores: torch.Tensor, neuron_scores: torch.Tensor, mac_h: float, mac_n: float,
           cap: float, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Global mask search (spec §4), vectorised: keep the top-h heads and top-n(h) neurons maximising the score sum.

    Inputs are flat score vectors over all layers; returns boolean keep masks of the same shapes. At least one
    head is kept; ties go to the smallest h. Splits whose kept MACs fall below `floor` are skipped when any split
    reaches it (the reference has no floor: with every neuron kept it may leave up to one head's MACs unused).
    """
    hs, hi = torch.sort(head_scores.double().flatten(), descending=True, stable=True)
    ns, ni = torch.sort(neuron_scores.double().flatten(), descending=True, stable=True)
    ch = hs.cumsum(0)
    cn = torch.cat([torch.zeros(1, dtype=torch.float64), ns.cumsum(0)])
    h = torch.arange(1, hs.numel() + 1, dtype=torch.float64)
    n = torch.floor((cap - h * mac_h) / mac_n)
    n = torch.where(h * mac_h + n * mac_n > cap, n - 1, n).clamp(max=ns.numel())  # guard float rounding
    valid = n >= 0
    full = valid & (h * mac_h + n.clamp(min=0) * mac_n >= floor)
    valid = full if full.any() else valid
    total = torch.where(valid, ch + cn[n.clamp(min=0).long()], torch.tensor(-math.inf, dtype=torch.float64))
    best = int(torch.argmax(total))  # first maximum
    nh, nn_ = best + 1, int(n[best]) if valid[best] else 0
    keep_h = torch.zeros(hs.numel(), dtype=torch.bool)
    keep_h[hi[:nh]] = True
    keep_n = torch.zeros(ns.numel(), dtype=torch.bool)
    keep_n[ni[:nn_]] = True
    return keep_h.view_as(head_scores), keep_n.view_as(neuron_scores)


# ---------------------------------------------------------------- masks as hooks
def _ctx_cols(arch: Arch, units: torch.Tensor) -> torch.Tensor:
    """Columns of the output projection (= per-head context features) owned by the given attention units."""
    w = arch.head_dim * arch.q_per_unit
    return (units[:, None] * w + torch.arange(w)[None]).flatten()


@contextlib.contextmanager
def masked(arch: Arch, head_keep: list[torch.Tensor], neuron_keep: list[torch.Tensor]) -> Iterator[None]:
    """Run the model with units removed by masks (0 = removed): zero their inputs to the o / down projections."""
    hooks = []

    def scale_by(vec: torch.Tensor):
        def hook(_m: nn.Module, args: tuple) -> tuple:
            return (args[0] * vec.to(args[0].dtype),) + tuple(args[1:])
        return hook

    for l in range(len(arch.layers)):
        hv = torch.repeat_interleave(head_keep[l].float(), arch.head_dim * arch.q_per_unit)
        hooks.append(arch.o(l).register_forward_pre_hook(scale_by(hv)))
        hooks.append(arch.down(l).register_forward_pre_hook(scale_by(neuron_keep[l].float())))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


# ---------------------------------------------------------------- physical slimming
def _slice(lin: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep rows (dim 0: outputs, with the bias) or columns (dim 1: inputs) `idx` of a Linear, in place."""
    with torch.no_grad():
        lin.weight = nn.Parameter(lin.weight.index_select(dim, idx).clone())
        if dim == 0:
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias[idx].clone())
            lin.out_features = len(idx)
        else:
            lin.in_features = len(idx)


class EmptyBertAttention(nn.Module):
    """A BERT attention block with every head removed: LN(x + output bias)."""

    def __init__(self, bias: torch.Tensor | None, ln: nn.LayerNorm):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.LayerNorm = ln

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        return self.LayerNorm(hidden_states + self.bias if self.bias is not None else hidden_states), None


class EmptyBertFFNOut(nn.Module):
    """BertOutput with every neuron removed: LN(attention output + output bias); input 'intermediate' ignored."""

    def __init__(self, bias: torch.Tensor | None, ln: nn.LayerNorm):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.LayerNorm = ln

    def forward(self, _inter: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.bias if self.bias is not None else input_tensor)


class EmptyLlamaPart(nn.Module):
    """A removed Llama attention or MLP: contributes only its output bias (zeros when none) to the residual."""

    def __init__(self, bias: torch.Tensor | None, attn: bool):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.attn = attn

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = hidden_states * 0 if self.bias is None else (hidden_states * 0 + self.bias)
        return (out, None) if self.attn else out


def _empty_attn(arch: Arch, l: int) -> bool:
    m = arch.layers[l]
    return isinstance(m.attention if arch.family == "bert" else m.self_attn, (EmptyBertAttention, EmptyLlamaPart))


def _empty_ffn(arch: Arch, l: int) -> bool:
    m = arch.layers[l]
    return isinstance(m.output if arch.family == "bert" else m.mlp, (EmptyBertFFNOut, EmptyLlamaPart))


def slim(arch: Arch, head_keep: list[torch.Tensor], neuron_keep: list[torch.Tensor]) -> dict[str, list[int]]:
    """Remove masked units physically (smaller matrices; empty sublayers become bias-only); returns kept counts."""
    dh, _r = arch.head_dim, arch.q_per_unit
    for l, layer in enumerate(arch.layers):
        units = torch.nonzero(head_keep[l]).flatten()
        if len(units) == 0:
            o = arch.o(l)
            if arch.family == "bert":
                layer.attention = EmptyBertAttention(o.bias, layer.attention.output.LayerNorm)
            else:
                layer.self_attn = EmptyLlamaPart(o.bias, attn=True)
        elif len(units) < len(head_keep[l]):
            qcols = _ctx_cols(arch, units)
            kvcols = (units[:, None] * dh + torch.arange(dh)[None]).flatten()
            _slice(arch.q(l), qcols, 0)
            for lin in arch.kv(l):
                _slice(lin, kvcols, 0)
            _slice(arch.o(l), qcols, 1)
            if arch.family == "bert":
                sa = layer.attention.self
                sa.num_attention_heads = len(units)
                sa.all_head_size = len(units) * dh
        neurons = torch.nonzero(neuron_keep[l]).flatten()
        if len(neurons) == 0:
            down = arch.down(l)
            if arch.family == "bert":
                layer.output = EmptyBertFFNOut(down.bias, layer.output.LayerNorm)
                layer.intermediate = nn.Identity()
            else:
                layer.mlp = EmptyLlamaPart(down.bias, attn=False)
        elif len(neurons) < len(neuron_keep[l]):
            for lin in arch.ups(l):
                _slice(lin, neurons, 0)
            _slice(arch.down(l), neurons, 1)
    counts = {"units": [arch.units(l) for l in range(len(arch.layers))],
              "neurons": [arch.neurons(l) for l in range(len(arch.layers))]}
    _update_config(arch, head_keep, counts)
    return counts


def _update_config(arch: Arch, head_keep: list[torch.Tensor], counts: dict[str, list[int]]) -> None:
    """Record per-layer shapes in the HF config; uniform values also go to the standard fields."""
    cfg = arch.backbone.config
    removed = {l: [int(u) for u in torch.nonzero(~k).flatten()] for l, k in enumerate(head_keep) if (~k).any()}
    if arch.family == "bert":
        prev = dict(getattr(cfg, "pruned_heads", None) or {})
        cfg.pruned_heads = {**prev, **removed}  # indices relative to the heads present before this pruning
    cfg.optin_units_per_layer = counts["units"]
    cfg.optin_ffn_per_layer = counts["neurons"]
    if len(set(counts["neurons"])) == 1:
        cfg.intermediate_size = counts["neurons"][0]
