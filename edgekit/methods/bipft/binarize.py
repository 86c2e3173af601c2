"""BiPFT binarizers (spec §2): BWN weights, elastic signed activations, unsigned attention probabilities, and the
binary linear that combines them. 0 maps to +1 everywhere (training and export agree; module doc of the package)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ALPHA_MIN = 1e-5


def sign_pm(x: torch.Tensor) -> torch.Tensor:
    """sgn with 0 -> +1: the ±1 code a 1-bit kernel stores (torch.sign would make exact zeros a third value).
    Scalars, not ones_like(x): with static shapes the exporter folded ones_like/neg into activation-sized constants
    (29 MB of a MiniLM export, read on every call)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _BWN(torch.autograd.Function):
    """m·sgn(W − e) exactly (two values) forward, identity gradient backward (no clipping, none via m or e)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        return w.abs().mean() * sign_pm(w - w.mean())

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g


def bwn(w: torch.Tensor) -> torch.Tensor:
    """m·sgn(W − e), e = mean(W), m = mean|W| (of W, not of W − e); identity straight-through gradient."""
    return _BWN.apply(w)


class _Signed(torch.autograd.Function):
    """x_b = α·sgn(x); dx = g·1[|x| ≤ α]; dα = Σ g·sgn(x) / √N (LSQ-style, spec §2.3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        s = sign_pm(x)
        ctx.save_for_backward(x, alpha, s)
        return alpha * s

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, alpha, s = ctx.saved_tensors
        gx = g * (x.abs() <= alpha).to(g.dtype)
        ga = (g * s).sum().reshape(alpha.shape) / math.sqrt(x.numel())
        return gx, ga


class _Unsigned(torch.autograd.Function):
    """P_b = α·clip(round(P/α), 0, 1) (a tie at P = α/2 goes to 0, as round-half-even does); spec §2.4 gradients."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        q = p / alpha
        r = (q > 0.5).to(p.dtype)
        ctx.save_for_backward(q, r)
        ctx.n = p.numel()
        return alpha * r

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        q, r = ctx.saved_tensors
        inside = ((q >= 0) & (q <= 1)).to(g.dtype)
        gp = g * inside
        ga = (g * ((q > 1).to(g.dtype) + inside * (r - q))).sum() / math.sqrt(ctx.n)
        return gp, ga.reshape(())


class SignedBinarizer(nn.Module):
    """α·sgn(x) with a learnable α (one per site), lazily set to 2·mean|x| at the first forward; `initialized` is a
    buffer so a saved student never re-initialises."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # python mirror of `initialized`: no tensor->bool in exported graphs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            if not bool(self.initialized):
                with torch.no_grad():
                    self.alpha.fill_(max(float(2 * x.detach().abs().mean()), ALPHA_MIN))
                    self.initialized.fill_(True)
            self._ready = True
        alpha = self.alpha.clamp_min(ALPHA_MIN)
        if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
            return _Signed.apply(x, alpha)
        return torch.where(x >= 0, alpha, -alpha).to(x.dtype)


class UnsignedBinarizer(nn.Module):
    """α_P·1[P > α_P/2] for attention probabilities; α_P learnable, lazily 4·mean(P)."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # python mirror of `initialized`: no tensor->bool in exported graphs

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            if not bool(self.initialized):
                with torch.no_grad():
                    self.alpha.fill_(max(float(4 * p.detach().mean()), ALPHA_MIN))
                    self.initialized.fill_(True)
            self._ready = True
        alpha = self.alpha.clamp_min(ALPHA_MIN)
        if torch.is_grad_enabled() and (p.requires_grad or alpha.requires_grad):
            return _Unsigned.apply(p, alpha)
        return alpha * (p > alpha / 2).to(p.dtype)


class BinaryLinear(nn.Module):
    """y = (α·sgn(x + β)) (m·sgn(W − e))ᵀ + bias. `frozen`: the weight already holds m·(±1) (after `freeze`), so the
    exported initializer is the 1-bit code times one scale; `binary_act=False` keeps the input float (BWN W1A32)."""

    def __init__(self, lin: nn.Linear, binary_act: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = nn.Parameter(lin.bias.detach().clone()) if lin.bias is not None else None
        self.binary_act = binary_act
        self.move = nn.Parameter(torch.zeros(lin.in_features, dtype=lin.weight.dtype)) if binary_act else None
        self.act = SignedBinarizer() if binary_act else None
        self.frozen = False
        self.in_features, self.out_features = lin.in_features, lin.out_features

    def binary_weight(self) -> torch.Tensor:
        return self.weight if self.frozen else bwn(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binary_act:
            x = self.act(x + self.move)
        return F.linear(x, self.binary_weight(), self.bias)

    @torch.no_grad()
    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(±1 int8 codes, scale m) of the weight: of sgn(W − e) before `freeze`, of the stored weight after."""
        if self.frozen:
            m = self.weight.abs().amax()
            return sign_pm(self.weight).to(torch.int8), m.float()
        w = self.weight.detach()
        return sign_pm(w - w.mean()).to(torch.int8), w.abs().mean().float()

    @torch.no_grad()
    def freeze(self) -> None:
        """Replace the latent weight by m·(±1) exactly (what deployment stores); training stops changing it."""
        s, m = self.codes()
        self.weight.data = (s.to(self.weight.dtype) * m.to(self.weight.dtype))
        self.weight.requires_grad_(False)
        self.frozen = True
