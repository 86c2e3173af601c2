"""DenseShift weight parametrisation (spec §3-4): STE binarizers, the exponent chain, the sqrt(e+1) surrogate.

Forward weight W = S(θ_s) · [H(θ_z)] · 2^e · α, e from the exponent latents θ_1..θ_K:
- recursive chain (the official code, generalised): e_1 = H(θ_1), e_k = (e_{k-1}+1)·H(θ_k), e = e_K;
- binary chain (option, not the authors' design): e = Σ_k 2^{k-1} H(θ_k).
H and S are identity straight-through estimators (no clipping window); the magnitude is back-propagated through
sqrt(e+1) instead of 2^e (`w_bw = s·sqrt(e+1); W = w_bw + (s·2^e − w_bw).detach()`). α is a fixed per-output-channel
buffer (1 where the scale was folded into the following BatchNorm). The zero gate θ_z exists only for the pot_zero
baseline (S3/DeepShift-style {0, ±2^p}): W = 0 where H(θ_z) = 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...quant.codes import WeightCode


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """S(x) = +1 if x >= 0 else -1 (x = 0 -> +1), gradient 1 everywhere."""
    return x + (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - x).detach()


def ste_step(x: torch.Tensor) -> torch.Tensor:
    """H(x) = 1 if x > 0 else 0 (x = 0 -> 0), gradient 1 everywhere."""
    return x + ((x > 0).to(x.dtype) - x).detach()


def n_latents(bits: int, chain: str, zero: bool) -> int:
    """Exponent latents K: P-1 (recursive) or log2(P) (binary) for P magnitudes; P = 2^(B-1), one less with zero."""
    P = n_magnitudes(bits, zero)
    return P - 1 if chain == "recursive" else int(round(math.log2(P)))


def n_magnitudes(bits: int, zero: bool) -> int:
    """Non-zero magnitudes 2^0..2^(P-1): P = 2^(B-1), or 2^(B-1) - 1 when one code is spent on zero."""
    return 2 ** (bits - 1) - (1 if zero else 0)


def exponent(lat: torch.Tensor, chain: str) -> torch.Tensor:
    """e from the latents (stacked on dim 0: lat[k-1] = θ_k); zeros when there are none."""
    if lat.shape[0] == 0:
        return torch.zeros(lat.shape[1:], dtype=lat.dtype, device=lat.device)
    if chain == "binary":
        return sum((2.0 ** k) * ste_step(lat[k]) for k in range(lat.shape[0]))
    e = ste_step(lat[0])
    for k in range(1, lat.shape[0]):
        e = (e + 1) * ste_step(lat[k])
    return e


def shift_weight(theta_s: torch.Tensor, lat: torch.Tensor, chain: str, gate: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """W = S(θ_s)·[H(θ_z)]·2^e in grid units, back-propagated through the sqrt(e+1) magnitude surrogate."""
    s = ste_sign(theta_s)
    if gate is not None:
        s = s * ste_step(gate)
    e = exponent(lat, chain)
    w_bw = s * torch.sqrt(e + 1)
    return w_bw + (s * torch.exp2(e) - w_bw).detach()


def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (ndim - 1))


class ShiftLayer(nn.Module):
    """A Conv/Linear whose weight is α·S(θ_s)·2^e (latents trained); `base` keeps the layer's hyper-parameters/bias."""

    def __init__(self, base: nn.Module, bits: int, chain: str, zero: bool, alpha: torch.Tensor):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)  # replaced by the latents; kept only for the layer's shape and dtype
        self.bits, self.chain, self.zero = bits, chain, zero
        shape = tuple(base.weight.shape)
        K = n_latents(bits, chain, zero)
        like = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.theta_s = nn.Parameter(torch.zeros(shape, **like))
        self.theta_e = nn.Parameter(torch.zeros((K,) + shape, **like))
        self.theta_z = nn.Parameter(torch.ones(shape, **like)) if zero else None
        self.register_buffer("alpha", alpha.detach().to(**like).clone())

    def grid_weight(self) -> torch.Tensor:
        """W in grid units (±2^p, or 0 with the zero gate), with the surrogate gradient."""
        return shift_weight(self.theta_s, self.theta_e, self.chain, self.theta_z)

    def weight(self) -> torch.Tensor:
        """The float weight the layer computes with: α · grid weight."""
        w = self.grid_weight()
        return w * _bcast(self.alpha, w.dim())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        if type(self.base) is nn.Linear:
            return F.linear(x, w, self.base.bias)
        if type(self.base) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
            return self.base._conv_forward(x, w, self.base.bias)
        # a subclass (e.g. EfficientNet's static same-padding conv pads in its own forward): run that forward with
        # the shift weight in place of the stored one
        return torch.func.functional_call(self.base, {"weight": w}, (x,))

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        """Integer codes ±2^p (0 for a closed zero gate) as int16."""
        return self.grid_weight().round().to(torch.int16)

    @torch.no_grad()
    def materialize(self, storage_bits: int | None = None) -> tuple[nn.Module, WeightCode]:
        """The plain layer holding α·codes exactly, and its WeightCode (codes, per-channel α, axis 0; `bits` = the
        storage request, B by default)."""
        c = self.codes()
        alpha = self.alpha.float().cpu()
        code = WeightCode(c.cpu(), alpha, 0, storage_bits or self.bits)
        self.base.weight.data = code.dequantize().to(self.base.weight.dtype).to(self.base.weight.device)
        self.base.weight.requires_grad_(True)
        return self.base, code

    # ---------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_lowvar(self, std: float, gen: torch.Generator) -> None:
        """Spec §4: every latent ~ N(0, std²) (so every latent sits next to its threshold)."""
        for p in (self.theta_s, self.theta_e, self.theta_z):
            if p is not None:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) * std)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, codes: torch.Tensor, far: float = 1.0) -> None:
        """Start at the converted codes: θ_s = x (the trained weight in grid units, w/α), exponent latents as below.

        Every latent is set to ± its *margin*: the log2 distance from |x| to the rounding boundary that flipping
        that latent alone would cross (boundary between 2^p and the flipped exponent's 2^p', i.e. their mean);
        latents whose flip changes nothing get ±`far`. So the chain reproduces the rounded exponent exactly, and a
        latent is as close to its threshold as the trained weight was to the next grid point. The zero gate
        (pot_zero) gets log2(|x| / 0.5), the distance to the 0/1 boundary. Margins are floored at 1e-4 so that
        no latent sits exactly on a threshold.
        """
        x = x.to(self.theta_s)
        ax = x.abs().clamp_min(1e-30)
        p = torch.log2(codes.abs().clamp_min(1).to(x.dtype)).round()  # exponent of the codes (0 for zeros)
        lat = pattern_for(p, self.theta_e.shape[0], self.chain)  # ±1 signs that reproduce p
        margins = torch.full_like(lat, far)
        for k in range(lat.shape[0]):
            flipped = lat.clone()
            flipped[k] = -flipped[k]
            p2 = exponent(flipped, self.chain)
            moved = p2 != p
            bound = (torch.exp2(p) + torch.exp2(p2)) / 2
            dist = (torch.log2(ax) - torch.log2(bound)).abs()
            margins[k] = torch.where(moved, dist, margins[k])
        self.theta_e.copy_(lat * margins.clamp(1e-4, 8.0))
        self.theta_s.copy_(torch.where(x == 0, torch.full_like(x, 1e-4), x))
        if self.theta_z is not None:
            self.theta_z.copy_(torch.log2(ax / 0.5).clamp(-8.0, 8.0))
            self.theta_z.copy_(torch.where(codes == 0, -self.theta_z.abs().clamp_min(1e-4),
                                           self.theta_z.abs().clamp_min(1e-4)))


def pattern_for(p: torch.Tensor, K: int, chain: str) -> torch.Tensor:
    """±1 latent signs (K, *p.shape) whose chain gives exponent p.

    recursive: θ_{K-p+1..K} > 0, θ_{K-p} < 0 and all earlier latents < 0, so flipping θ_{K-p} raises e by one and
    flipping θ_{K-p+1} lowers it by one. binary: the bits of p.
    """
    lat = -torch.ones((K,) + tuple(p.shape), dtype=p.dtype, device=p.device)
    pi = p.long()
    for k in range(K):
        if chain == "binary":
            on = ((pi >> k) & 1) == 1
        else:
            on = k >= K - pi  # 0-based index k is θ_{k+1}
        lat[k] = torch.where(on, 1.0, -1.0)
    return lat
