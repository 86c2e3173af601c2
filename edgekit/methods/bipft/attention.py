"""BiPFT self-attention (spec §3): binary Q/K/V projections, binarized Q/K/V and attention probabilities, and the
low-rank estimators of the binarization residual polynomial, computed from the block input X."""
from __future__ import annotations

import torch
from torch import nn

from .binarize import BinaryLinear, SignedBinarizer, UnsignedBinarizer


def add_mask(s: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scores plus an HF attention mask: additive float (B,1,Lq,Lk) or boolean (True = attend)."""
    if mask is None:
        return s
    if mask.dtype == torch.bool:
        return s.masked_fill(~mask, torch.finfo(s.dtype).min)
    return s + mask.to(s.dtype)


class Estimators(nn.Module):
    """Five FP linears X -> rank r: a (≈Q̂ side), e (≈R_Q), f (≈K̂), b (≈R_K) and g (≈R_V, one value per token),
    shared over heads (`groups` = 1) or one set per head (`groups` = heads). N(0, 0.02²) weights, zero biases."""

    def __init__(self, d: int, rank: int, groups: int) -> None:
        super().__init__()
        self.rank, self.groups = rank, groups
        self.qm, self.qp, self.km, self.kp = (nn.Linear(d, rank * groups) for _ in range(4))
        self.vp = nn.Linear(d, groups)
        for lin in (self.qm, self.qp, self.km, self.kp, self.vp):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def _split(self, t: torch.Tensor, r: int) -> torch.Tensor:
        b, l, _ = t.shape
        return t.view(b, l, self.groups, r).transpose(1, 2)  # (B, G, L, r)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """a bᵀ + e fᵀ + e bᵀ, (B, G, L, L): estimates Q̂R_Kᵀ + R_QK̂ᵀ + R_QR_Kᵀ."""
        a, e, f, b = (self._split(m(x), self.rank) for m in (self.qm, self.qp, self.km, self.kp))
        return torch.cat([a, e, e], -1) @ torch.cat([b, f, b], -1).transpose(-1, -2)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """g, (B, G, L, 1): estimates R_V, broadcast over the head dimension."""
        return self._split(self.vp(x), 1)


class BiPFTSelfAttention(nn.Module):
    """Drop-in for transformers' BertSelfAttention (returns (context, None)). `capture` keeps the pre-binarization
    scores of the last call (attention distillation)."""

    def __init__(self, old: nn.Module, heads: int, rank: int, per_head: bool, binary_act: bool = True) -> None:
        super().__init__()
        d = old.query.in_features
        self.heads, self.head_dim = heads, old.query.out_features // heads
        self.scaling = self.head_dim ** -0.5
        self.query, self.key, self.value = (BinaryLinear(m, binary_act) for m in (old.query, old.key, old.value))
        self.binary_act = binary_act
        self.act_q, self.act_k, self.act_v = (SignedBinarizer() if binary_act else nn.Identity() for _ in range(3))
        self.act_p = UnsignedBinarizer() if binary_act else nn.Identity()
        self.dropout = nn.Dropout(getattr(old.dropout, "p", 0.0))
        self.est = Estimators(d, rank, heads if per_head else 1) if rank > 0 else None
        self.capture = False
        self.last_scores: torch.Tensor | None = None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, l, _ = t.shape
        return t.view(b, l, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        x = hidden_states
        q = self._heads(self.act_q(self.query(x)))
        k = self._heads(self.act_k(self.key(x)))
        v = self._heads(self.act_v(self.value(x)))
        s = q @ k.transpose(-1, -2)
        if self.est is not None:
            s = s + self.est.scores(x)
        s = add_mask(s * self.scaling, attention_mask)
        if self.capture:
            self.last_scores = s
        p = self.act_p(self.dropout(torch.softmax(s, -1)))
        o = p @ v
        if self.est is not None:
            o = o + p @ self.est.value(x)
        b, _, l, _ = o.shape
        return o.transpose(1, 2).reshape(b, l, self.heads * self.head_dim), None


def fp_scores(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked, scaled QKᵀ of a float BertSelfAttention (the teacher's attention, for distillation)."""
    b, l, _ = x.shape
    h = attn.config.num_attention_heads if hasattr(attn, "config") else attn.num_attention_heads
    dh = attn.query.out_features // h
    q = attn.query(x).view(b, l, h, dh).transpose(1, 2)
    k = attn.key(x).view(b, l, h, dh).transpose(1, 2)
    return add_mask((q @ k.transpose(-1, -2)) * dh ** -0.5, mask)


__all__ = ["BiPFTSelfAttention", "Estimators", "SignedBinarizer", "UnsignedBinarizer", "add_mask", "fp_scores"]
