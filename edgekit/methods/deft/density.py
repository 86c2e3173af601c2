"""DEFT's density objective and metric: the smooth L0 surrogate, activation hooks, per-layer density counts.

phi_eps(a) = a^2 / (a^2 + eps) (spec §4): 0 at a = 0, -> 1 for |a| >> sqrt(eps), so its mean tends to the
fraction of non-zeros as eps -> 0. The training loss averages phi over (positions, features) per example and
layer, then over examples and layers (spec's (B, L) -> scalar). The metric (spec §3) counts exact non-zeros per
example and layer, and, because GELU/SiLU are practically never exactly zero in fp32, also the entries with
|a| > tau ("thresholded density"; tau is named in every report).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def phi(a: torch.Tensor, eps: float) -> torch.Tensor:
    """Smooth L0 surrogate a^2 / (a^2 + eps)."""
    a2 = a * a
    return a2 / (a2 + eps)


def l0_penalty(acts: list[torch.Tensor], eps: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean over examples and layers of mean_{t,k} phi(A_l[b,t,k]); `mask` (B, T) restricts t to real tokens."""
    per = []
    for a in acts:
        p = phi(a.float(), eps)
        if mask is None:
            per.append(p.reshape(p.shape[0], -1).mean(1))
        else:
            m = mask.to(p.dtype).unsqueeze(-1)
            per.append((p * m).sum((1, 2)) / (m.sum((1, 2)) * p.shape[-1]).clamp_min(1))
    return torch.stack(per, 1).mean()


class Capture:
    """Forward hooks on the MLP activation modules; `acts` holds one tensor per layer of the last forward."""

    def __init__(self, modules: list[nn.Module]):
        self.acts: list[torch.Tensor] = []
        self.which: list[int] = []  # layer index of each captured tensor (a skipped block captures nothing)
        self.handles = [m.register_forward_hook(self._hooker(i)) for i, m in enumerate(modules)]

    def _hooker(self, i: int):
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            self.acts.append(out)
            self.which.append(i)
        return hook

    def clear(self) -> None:
        self.acts = []
        self.which = []

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.acts = []


class DensityMeter:
    """Accumulates, per layer, exact and thresholded non-zero fractions per example (all positions / real tokens)."""

    def __init__(self, n_layers: int, tau: float):
        self.tau = tau
        self.sums = {k: torch.zeros(n_layers, dtype=torch.float64) for k in ("exact", "thr", "exact_tok", "thr_tok")}
        self.seen = torch.zeros(n_layers, dtype=torch.float64)

    def add(self, acts: list[torch.Tensor], which: list[int], mask: torch.Tensor | None) -> None:
        """Add one batch: per example b, count_nonzero(A_l[b]) / (T * d_ff) (spec §3), and the same over real tokens."""
        for li, a in zip(which, acts):
            a = a.detach().float()
            b, k = a.shape[0], a.shape[-1]
            t = a[0].numel() // k
            a = a.reshape(b, t, k)
            nz, big = (a != 0), (a.abs() > self.tau)
            self.sums["exact"][li] += (nz.reshape(b, -1).sum(1).double() / (t * k)).sum().cpu()
            self.sums["thr"][li] += (big.reshape(b, -1).sum(1).double() / (t * k)).sum().cpu()
            m = torch.ones(b, t, device=a.device) if mask is None else mask.reshape(b, t).to(a.device).float()
            den = (m.sum(1) * k).clamp_min(1).double()
            self.sums["exact_tok"][li] += ((nz.float() * m[..., None]).sum((1, 2)).double() / den).sum().cpu()
            self.sums["thr_tok"][li] += ((big.float() * m[..., None]).sum((1, 2)).double() / den).sum().cpu()
            self.seen[li] += b

    def result(self) -> dict[str, Any]:
        """Mean density (a fraction) over the layers that ran, and per layer (None: block removed), exact and
        |a| > tau, over all positions and over real tokens (`_tok`)."""
        ran = self.seen > 0
        out: dict[str, Any] = {"tau": self.tau, "layers_measured": int(ran.sum())}
        for k, v in self.sums.items():
            per = [float(v[i] / self.seen[i]) if ran[i] else None for i in range(len(v))]
            vals = [p for p in per if p is not None]
            out[k] = sum(vals) / len(vals) if vals else None
            out[f"{k}_per_layer"] = per
        return out
