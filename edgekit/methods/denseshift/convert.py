"""Data-free conversion of a trained layer to power-of-two codes: grid rounding, per-channel scale, BatchNorm fold.

Grid (grid units, i.e. the weight divided by the channel's scale α):
- no zero (DenseShift): {±2^p : 0 <= p < P}, P = 2^(B-1); the sign of 0 is +.
- with zero (pot_zero, S3/DeepShift-style): {0} ∪ {±2^p : 0 <= p < P-1} (one code of the B bits means zero).
Rounding is to the nearest grid value in the *linear* domain (boundaries at 1.5·2^p, and 0.5 for zero), because
the objective is the weight's squared error.

Scale α per output channel minimises ‖w − α·q(w/α)‖² by a small search plus a closed-form step: candidates
α_k = max|w| / 2^(P_top) · 2^(-k/8), k = 0..`search` (P_top the largest exponent; k covers `search`/8 binades below
the max-aligned scale), each refined by alternating the least-squares scale for fixed codes, α* = <w, q>/<q, q>,
and re-rounding (Lloyd steps, at most `lloyd`, until the codes stop changing; the error never rises); the lowest
error over all candidates and steps wins per channel. `search=0` keeps only the max-aligned start.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import UnsupportedModelError
from .shift import n_magnitudes

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def round_to_grid(x: torch.Tensor, bits: int, zero: bool) -> torch.Tensor:
    """Nearest grid value (linear domain) of x given in grid units; float tensor of ±2^p (or 0)."""
    P = n_magnitudes(bits, zero)
    ax = x.abs()
    bounds = torch.tensor([1.5 * 2.0 ** k for k in range(P - 1)], dtype=x.dtype, device=x.device)
    mag = torch.exp2(torch.bucketize(ax, bounds, right=True).to(x.dtype))  # 2^(number of boundaries <= |x|)
    if zero:
        mag = torch.where(ax >= 0.5, mag, torch.zeros_like(mag))
    return torch.where(x >= 0, mag, -mag)


def search_scale(w: torch.Tensor, bits: int, zero: bool, search: int = 24, lloyd: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(α per output channel, codes) minimising the channel's squared reconstruction error (module doc)."""
    W = w.detach().double().flatten(1)
    m = W.abs().amax(1)
    top = 2.0 ** (n_magnitudes(bits, zero) - 1)
    dead = m == 0
    m = torch.where(dead, torch.ones_like(m), m)
    best_err = torch.full_like(m, float("inf"))
    best_a = m / top
    for k in range(search + 1):
        a = m / top * 2.0 ** (-k / 8)
        q = round_to_grid(W / a[:, None], bits, zero)
        for _ in range(lloyd + 1):
            err = ((W - a[:, None] * q) ** 2).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_a = torch.where(better, a, best_a)
            den = (q * q).sum(1)
            a_new = torch.where(den > 0, (W * q).sum(1) / den.clamp_min(1e-300), a)
            a = torch.where(a_new > 0, a_new, a)
            q_new = round_to_grid(W / a[:, None], bits, zero)
            if torch.equal(q_new, q):
                err = ((W - a[:, None] * q) ** 2).sum(1)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_a = torch.where(better, a, best_a)
                break
            q = q_new
    # an all-zero channel: zero-free codes cannot be 0, so the scale is made negligible (2^-40 of the layer max)
    tiny = W.abs().max().clamp_min(1e-30) * 2.0 ** -40
    best_a = torch.where(dead, tiny.expand_as(best_a), best_a)
    alpha = best_a.float()
    codes = round_to_grid(W / alpha.double()[:, None], bits, zero).reshape(w.shape)
    return alpha, codes


def fold_scale_into_bn(layer: nn.Module, bn: nn.Module, alpha: torch.Tensor) -> bool:
    """Make BN(layer_α(x)) == BN'(layer_1(x)) exactly in eval mode, where layer_1's weight is layer_α's / α.

    The layer's output becomes u = z/α (bias /= α). BN' keeps β, sets μ' = μ/α and σ'² + ε = (σ² + ε)/α² so γ stays
    (the running statistics then match what the scaled layer produces, so fine-tuning in train mode keeps them
    consistent). When that variance would be < 0 (α > 1 with tiny σ²), σ'² = σ²/α² and γ' = γ·α·σ'/σ instead.
    Returns False (nothing changed) when BN has no running statistics or no affine weight is available.
    """
    if not bn.track_running_stats or bn.running_var is None:
        return False
    a = alpha.double().to(bn.running_var.device)
    var_eps = bn.running_var.double() + bn.eps
    new_var = var_eps / a**2 - bn.eps
    ok = new_var > 0
    if not bool(ok.all()) and not bn.affine:
        return False
    with torch.no_grad():
        fallback_var = bn.running_var.double() / a**2
        var = torch.where(ok, new_var, fallback_var)
        if bn.affine:
            g = bn.weight.double() * torch.where(ok, torch.ones_like(a), a * torch.sqrt(var + bn.eps) / torch.sqrt(var_eps))
            bn.weight.copy_(g.to(bn.weight.dtype))
        bn.running_mean.copy_((bn.running_mean.double() / a).to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
        if getattr(layer, "bias", None) is not None:
            layer.bias.copy_((layer.bias.double() / a).to(layer.bias.dtype))
    return True


@dataclass
class Plan:
    """Layers in forward order, which to convert, which BN follows each, and why others are skipped."""

    order: list[str] = field(default_factory=list)
    convert: list[str] = field(default_factory=list)
    bn: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    traced: bool = True


def plan_layers(model: nn.Module, keep_first: bool, keep_last: bool, skip: list[str]) -> Plan:
    """Forward order and following BatchNorms from a torch.fx trace (module order and no BN fold if untraceable)."""
    from ..udfc.prune import trace

    mods = dict(model.named_modules())
    plan = Plan()
    try:
        gm = trace(model)
    except UnsupportedModelError:
        gm = None
        plan.traced = False
    if gm is not None:
        calls = [n for n in gm.graph.nodes if n.op == "call_module"]
        uses: dict[str, int] = {}
        for n in calls:
            uses[n.target] = uses.get(n.target, 0) + 1
        for n in calls:
            mod = mods[n.target]
            if not isinstance(mod, LAYERS) or n.target in plan.order:
                continue
            plan.order.append(n.target)
            users = list(n.users)
            if (len(users) == 1 and users[0].op == "call_module" and isinstance(mods[users[0].target], BNS)
                    and uses[users[0].target] == 1 and uses[n.target] == 1
                    and mods[users[0].target].num_features == _out(mod)):
                plan.bn[n.target] = users[0].target
    else:
        plan.order = [n for n, m in mods.items() if isinstance(m, LAYERS)]
    if not plan.order:
        raise UnsupportedModelError(f"denseshift found no Conv/Linear layer in {type(model).__name__}")
    convs = [n for n in plan.order if isinstance(mods[n], LAYERS[:3])]
    lins = [n for n in plan.order if isinstance(mods[n], nn.Linear)]
    for name in plan.order:
        if keep_first and convs and name == convs[0]:
            plan.skipped[name] = "first conv kept in float (keep_first)"
        elif keep_last and lins and name == lins[-1]:
            plan.skipped[name] = "last linear kept in float (keep_last)"
        elif any(re.search(p, name) for p in skip):
            plan.skipped[name] = "matches a skip pattern (kept in float)"
        elif mods[name].weight.numel() == 0:
            plan.skipped[name] = "empty weight"
        else:
            plan.convert.append(name)
    return plan


def _out(mod: nn.Module) -> int:
    return mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted `name`."""
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)
