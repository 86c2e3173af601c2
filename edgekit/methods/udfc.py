"""UDFC (Bai, Chen et al., ICCV 2023): data-free structured pruning + k-bit quantization, closed-form compensation.

Spec: shared/methods/udfc.md. Pruned filters are re-routed into kept channels of the consumer layer (ŝ, Eq. 20);
quantized filters get a per-channel gain s̃ (Eq. 14) folded into the BatchNorm after them. No data, no gradients.

Decisions where the paper/spec leaves room, and why:
- Graph: producer/consumer pairs come from a torch.fx trace (conv/BN/linear/activation subclasses are leaves).
  A conv's channels are pruned only when conv -> BN -> ReLU | ReLU6 | identity reaches conv/linear consumers
  through per-channel ops (dropout, avg/max pool, spatial mean, flatten into a linear). Channels entering an add,
  a concat or any other op are never pruned; depthwise/grouped producers and consumers are not pruned (they are
  quantized). Untraceable models raise UnsupportedModelError before any work: quantization-only would be sound in
  principle, but the BN fold needs the graph to know which BN follows which conv, so we do not guess.
- All pruning runs first (forward order), then all quantization. This equals the spec's per-layer interleaving:
  ŝ uses FP weights only and s̃ of a layer only sees its own (already compensated and sliced) weights.
- Kept count: round((1-r)N) rounding half up (not NM's int()), then up to a multiple of `round_to`
  (rounding up never prunes more than asked: with 'nearest', a 16-channel layer at r=0.3 lost half its channels).
- γ≈0 channels (|γ| <= 1e-8 max|γ|) output the constant act(β): they are pruned first and their constant is
  folded into the consumer bias (zero-padding border effects ignored, as the spec says); they are never solved.
- ŝ: the Eq. 20 closed form with ridge λ = eps_ridge·tr(QᵀQ)/|𝒦|, solved in float64 for all pruned channels at
  once (Q depends on j only through c_j, so one Cholesky + Sherman-Morrison per rank-one α1 term); lstsq when
  eps_ridge=0; scipy NNLS per channel when nonneg=True.
- s̃ is folded into BN (γ, β *= s̃). That compensates the pre-activation, which is exactly what ℓq models, so it
  is the right form for every activation. For ReLU it equals the paper's consumer-input scaling; for ReLU6 the
  two differ only where the output clips at 6 and we keep the BN fold (it is the one ℓq is optimal for).
  The pruning re-route of ReLU6 chains is approximate (ReLU6 is not positively homogeneous above 6); such pairs
  are still pruned (list them in `skip` to avoid) and the activation of every pruned layer is reported.
- Quantizer: mid-rise grid with M = max|W| after pruning; W̃ = M·Q_k(W) (rescale_quantized). M is taken per
  output channel by default (`per_channel=True`), not per tensor as in the paper. Why: measured on EfficientNet-
  Lite0 (benchmarks/udfc.py, fashion probe, FP32 0.859), the paper's per-tensor grid gives 0.841/0.269/0.078 at
  W8/W6/W4 — below naive per-tensor RTN (0.852/0.634/0.118) — because the zero-free grid forces the many tiny
  depthwise weights of a layer with one large filter to ±M/2^k and BN's large γ/σ amplifies that; s̃ cannot undo
  it. Per channel, the same grid and compensation give 0.855/0.796/0.179, above both per-tensor and per-channel
  RTN (0.857/0.770/0.161) at W6/W4. Per-channel M costs one scale per filter (already stored for DequantizeLinear
  with axis) and keeps every §8 property of the grid per channel. `per_channel=false` is the paper's grid. Layers
  without a following BN (heads, convs feeding adds without BN) get s̃ = 1 and always keep the M scale.
  bits default 6: the paper's setting for its ImageNet models (Tables 1, 3); bits ≤ 8 store as int8, ≤ 4 int4.
  bits up to 16 are accepted (spec §8.1 checks k=16), but codes are recorded only for bits ≤ 8.
- The NM baseline (`compensation="nm"`) is one-hot Neuron Merging on BN-folded filters R = (γ/σ)W: nearest kept
  filter by cosine, scale ‖R_j‖/‖R_i‖, dropped when the cosine is ≤ 0 (no bias term, std not var; NM's
  decompose.py appears to invert the γ/σ ratio, which we do not copy). `compensation="none"` is drop-only.
- MACs need an input: `example_inputs` argument, else `input_shape`, else (1, C_in of the first conv, 224, 224),
  falling back to 64 and 32 pixels when the model rejects 224. `data` is ignored (the method is data-free).
"""
from __future__ import annotations

import re
import time
from collections import Counter
from typing import Literal, Sequence

import torch
from pydantic import BaseModel, Field
from torch import nn

from ..errors import UnsupportedModelError
from ..flops import count_macs, count_params
from . import _prune as P
from ..quant.codes import WeightCode, attach_codes, clear_codes
from ._report import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "none"
SUMMARY = "UDFC: data-free structured pruning + k-bit quantization with closed-form compensation (ICCV 2023)"
_GAMMA_EPS = 1e-8


class Config(BaseModel, extra="forbid"):
    """Options of UDFC."""

    ratio: float = Field(0.3, ge=0.0, lt=0.95, description="fraction of output channels pruned in each prunable conv")
    criterion: Literal["l1", "l2"] = Field("l2", description="filter-norm criterion that picks the kept channels")
    bits: int | None = Field(6, ge=2, le=16, description="weight bits of the mid-rise grid (None: no quantization)")
    alpha1: float = Field(0.01, ge=0.0, description="weight of the bias term in the pruning loss (paper: 0.01)")
    alpha2: float = Field(0.008, ge=0.0, description="weight of the bias term in the quantization loss (paper: 0.008)")
    rescale_quantized: bool = Field(True, description="keep quantized weights at scale M (else s̃ absorbs M)")
    nonneg: bool = Field(False, description="constrain merge coefficients ŝ >= 0 (NNLS) instead of the closed form")
    eps_ridge: float = Field(1e-6, ge=0.0, description="ridge λ = eps_ridge·tr(QᵀQ)/|kept| against rank deficiency")
    round_to: int = Field(1, ge=1, description="round kept-channel counts up to a multiple of this (8/16 help runtimes)")
    skip: list[str] = Field(default_factory=list, description="regexes of module names to leave unpruned and in float")
    per_channel: bool = Field(True, description="per-output-channel max M (default; see docstring) instead of the "
                              "paper's per-tensor M (false)")
    compensation: Literal["udfc", "nm", "none"] = Field(
        "udfc", description="pruning compensation: udfc closed form, nm one-hot Neuron Merging, none drop-only")
    input_shape: list[int] | None = Field(None, description="example input shape for tracing and MAC counts")


# ---------------------------------------------------------------- pruning math (ŝ), Eq. 12 / 20
def prune_system(w: torch.Tensor, a: torch.Tensor, K: torch.Tensor, keep: torch.Tensor, j: int):
    """(Q, V, p, K_j) of ℓp for pruned channel j, float64: Q columns c_j·R_i, c_j = σ_j/γ_j."""
    W = w.detach().double().flatten(1)
    Q = ((a[keep, None] * W[keep]) / a[j]).T
    return Q, W[j], K[keep], K[j]


def prune_loss(s: torch.Tensor, Q, V, p, Kj, alpha1: float) -> torch.Tensor:
    """ℓp(ŝ) = ‖V − Qŝ‖² + α1 (K_j − pᵀŝ)²."""
    s = s.double()
    return ((V - Q @ s) ** 2).sum() + alpha1 * (Kj - p @ s) ** 2


def prune_coefficients(w, a, K, keep, prune, alpha1=0.01, eps_ridge=1e-6, nonneg=False) -> torch.Tensor:
    """S (|𝒫|, |𝒦|): row j = argmin ℓp + λ‖ŝ‖² for pruned channel j (Eq. 20 with ridge), float64."""
    W = w.detach().double().flatten(1)
    R = a[keep, None] * W[keep]  # (|K|, d); Q_j = R.T / a_j
    G, p, aj = R @ R.T, K[keep], a[prune]
    lam = eps_ridge * float(torch.trace(G)) / max(len(keep), 1)
    rhs = aj[:, None] * (W[prune] @ R.T) + alpha1 * (aj**2 * K[prune])[:, None] * p[None]  # (|P|, |K|) / c_j²
    eye = torch.eye(len(keep), dtype=torch.float64)
    if nonneg:
        from scipy.optimize import nnls

        rows = []
        for j in prune.tolist():
            Q, V, _, Kj = prune_system(w, a, K, keep, j)
            A = torch.cat([Q, alpha1**0.5 * p[None], (lam / float(a[j]) ** 2) ** 0.5 * eye])
            b = torch.cat([V, (alpha1**0.5 * Kj)[None], torch.zeros(len(keep), dtype=torch.float64)])
            rows.append(torch.from_numpy(nnls(A.numpy(), b.numpy(), maxiter=50 * len(keep))[0]))
        return torch.stack(rows) if rows else rhs
    L, info = torch.linalg.cholesky_ex(G + lam * eye)
    if lam > 0 and int(info) == 0:  # B = G + λ'I shared; α1 a_j² p pᵀ added by Sherman-Morrison
        Y = torch.cholesky_solve(rhs.T, L)  # (|K|, |P|)
        z = torch.cholesky_solve(p[:, None], L)[:, 0]
        u = alpha1 * aj**2
        return (Y - z[:, None] * (u * (p @ Y)) / (1 + u * (p @ z)))[...].T
    rows = []
    for j in prune.tolist():
        Q, V, _, Kj = prune_system(w, a, K, keep, j)
        A = torch.cat([Q, alpha1**0.5 * p[None]])
        b = torch.cat([V, (alpha1**0.5 * Kj)[None]])
        rows.append(torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0])
    return torch.stack(rows) if rows else rhs


def nm_coefficients(w, a, keep, prune) -> torch.Tensor:
    """One-hot Neuron-Merging baseline on folded filters: nearest kept R_i by cosine, scale ‖R_j‖/‖R_i‖."""
    R = a[:, None] * w.detach().double().flatten(1)
    n = R.norm(dim=1).clamp_min(1e-300)
    cos = (R[prune] / n[prune, None]) @ (R[keep] / n[keep, None]).T
    best = cos.argmax(dim=1)
    S = torch.zeros(len(prune), len(keep), dtype=torch.float64)
    ok = cos.gather(1, best[:, None])[:, 0] > 0
    S[ok, best[ok]] = (n[prune] / n[keep][best])[ok]
    return S


# ---------------------------------------------------------------- quantization math (s̃), Eq. 3 / 14
def midrise_quantize(w: torch.Tensor, bits: int, M: torch.Tensor, base: torch.Tensor | None = None) -> WeightCode:
    """Codes of W on the mid-rise grid of max M (0-d, or per row); dequantize() = base·Q_k(W) (base defaults to M)."""
    levels = 2**bits - 1
    shape = (-1,) + (1,) * (w.dim() - 1)
    Mb = torch.where(M > 0, M, torch.ones_like(M)).reshape(shape if M.dim() else ())
    n = torch.round(levels * (w.detach().double() / (2 * Mb.double()) + 0.5)).clamp(0, levels)
    base = M if base is None else base
    return WeightCode(codes=(n - 2 ** (bits - 1)).to(torch.int32 if bits > 15 else torch.int16),
                      scale=(2 * base.double() / levels).float(), axis=0 if M.dim() else None, bits=bits,
                      offset=(base.double() / levels).float())


def quant_scale(R: torch.Tensor, Rt: torch.Tensor, K: torch.Tensor, alpha2: float) -> torch.Tensor:
    """s̃_m = (R̃·R + α2 K²) / (R̃·R̃ + α2 K²) per row (1 where the denominator is 0)."""
    num = (Rt * R).sum(1) + alpha2 * K**2
    den = (Rt * Rt).sum(1) + alpha2 * K**2
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))


def quant_loss(s, R, Rt, K, alpha2: float) -> torch.Tensor:
    """ℓq(s̃) = ‖R − s̃R̃‖² + α2 (K − s̃K)², per row."""
    return ((R - s[:, None] * Rt) ** 2).sum(1) + alpha2 * (K - s * K) ** 2


# ---------------------------------------------------------------- the method
def _shapes_for_input(model: nn.Module, gm, cfg: Config, example_inputs) -> tuple[torch.Tensor, ...]:
    """Pick the example input (argument > input_shape > derived) and record node shapes with it."""
    if example_inputs is not None:
        ex = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
        P.propagate_shapes(gm, ex)
        return ex
    gen = torch.Generator().manual_seed(0)
    if cfg.input_shape:
        ex = (torch.randn(*cfg.input_shape, generator=gen),)
        P.propagate_shapes(gm, ex)
        return ex
    conv = P.first_conv(model, gm)
    if conv is None:
        raise UnsupportedModelError("udfc needs a CNN: no Conv layer was found in the traced graph")
    for size in (224, 64, 32):
        ex = (torch.randn(1, conv.in_channels, *[size] * len(conv.kernel_size), generator=gen),)
        try:
            P.propagate_shapes(gm, ex)
            return ex
        except Exception:  # noqa: BLE001 - the model rejects this size; try the next one
            continue
    raise UnsupportedModelError("could not infer an input shape; pass --set input_shape=[1,C,H,W]")


def _require_conv_bn(model: nn.Module, gm) -> None:
    """UnsupportedModelError naming what the graph holds when no Conv feeds a BatchNorm (nothing to fold s̃ into)."""
    mods = dict(model.named_modules())
    calls = [n for n in gm.graph.nodes if n.op == "call_module"]
    for n in calls:
        if isinstance(mods[n.target], P.CONV) and any(
                u.op == "call_module" and isinstance(mods[u.target], P.BN) for u in n.users):
            return
    kinds = Counter(type(mods[n.target]).__name__ for n in calls)
    found = ", ".join(f"{v} {k}" for k, v in kinds.most_common(8)) or "no layers"
    raise UnsupportedModelError(
        f"udfc needs Conv layers followed by BatchNorm, and {type(model).__name__} has no Conv+BatchNorm pair "
        f"(found: {found}); use the rtn method to quantize such a model")


def _prune_chain(ch: P.Chain, cfg: Config) -> tuple[int, int] | None:
    """Prune one chain in place; (N before, N after) or None when nothing is removed."""
    conv, N = ch.module, ch.module.out_channels
    k = P.n_keep(N, cfg.ratio, cfg.round_to)
    if k >= N:
        return None
    a, K = P.bn_fold(conv, ch.bn)
    const = a.abs() <= _GAMMA_EPS * float(a.abs().max())
    score = P.filter_norms(conv.weight, cfg.criterion).double().masked_fill(const, -1.0)
    keep = torch.sort(torch.topk(score, k).indices).values
    mask = torch.ones(N, dtype=torch.bool)
    mask[keep] = False
    prune = torch.nonzero(mask)[:, 0]
    live = prune[~const[prune]]
    S = torch.zeros(len(prune), len(keep), dtype=torch.float64)
    if len(live) and cfg.compensation != "none":
        S[~const[prune]] = (nm_coefficients(conv.weight, a, keep, live) if cfg.compensation == "nm" else
                            prune_coefficients(conv.weight, a, K, keep, live, cfg.alpha1, cfg.eps_ridge, cfg.nonneg))
    cvals = torch.where(const[prune], P.act_value(ch.act, K[prune]), torch.zeros(len(prune), dtype=torch.float64))
    for c in ch.consumers:
        P.merge_consumer(c, keep, prune, S, cvals)
    P.slice_producer(conv, ch.bn, keep)
    return N, k


@torch.no_grad()
def _quantize(mod: nn.Module, bn: nn.Module | None, cfg: Config) -> tuple[torch.Tensor | None, WeightCode]:
    """Put `mod.weight` on the k-bit grid; fold s̃ into `bn` if given. Returns (s̃ or None without BN, codes)."""
    w = mod.weight.detach()
    M = w.abs().flatten(1).amax(1) if cfg.per_channel else w.abs().max()
    base = M if (cfg.rescale_quantized or bn is None) else torch.ones_like(M)
    code = midrise_quantize(w, cfg.bits, M, base)
    wt = code.dequantize().to(w.dtype)
    s = None
    if bn is not None:
        a, K = P.bn_fold(mod, bn)
        s = quant_scale(a[:, None] * w.double().flatten(1), a[:, None] * wt.double().flatten(1), K, cfg.alpha2)
        bn.weight.mul_(s.to(bn.weight.dtype))
        bn.bias.mul_(s.to(bn.bias.dtype))
    mod.weight.copy_(wt)
    return s, code


def apply(model: nn.Module, cfg: Config, data=None, example_inputs: Sequence[torch.Tensor] | None = None
          ) -> tuple[nn.Module, MethodReport]:
    """Prune (with ŝ re-routing) then quantize (with s̃ BN folds) `model` in place; data is not used."""
    t0 = time.perf_counter()
    model.eval()
    gm = P.trace(model)  # raises UnsupportedModelError before any change
    _require_conv_bn(model, gm)
    ex = _shapes_for_input(model, gm, cfg, example_inputs)
    chains = P.find_chains(model, gm)
    rep = MethodReport("udfc", params_before=count_params(model), macs_before=count_macs(model, ex))
    clear_codes(model)
    skipped = lambda n: any(re.search(p, n) for p in cfg.skip)  # noqa: E731
    pruned, acts = {}, {}
    for ch in chains:
        if skipped(ch.name):
            rep.layers_skipped[ch.name] = "matches a skip pattern (left unpruned, in float)"
        elif ch.reason:
            rep.layers_skipped[ch.name] = f"not pruned: {ch.reason}"
        elif cfg.ratio > 0 and (nk := _prune_chain(ch, cfg)) is not None:
            pruned[ch.name], acts[ch.name] = list(nk), ch.act
    qnames, s_all, qw = [], [], 0
    if cfg.bits is not None:
        mods = dict(model.named_modules())
        bns = {ch.name: ch.bn for ch in chains if ch.bn is not None}
        layers = dict.fromkeys([ch.name for ch in chains] + [n.target for n in gm.graph.nodes if n.op == "call_module"
                                                             and isinstance(mods[n.target], nn.Linear)])
        for name in layers:
            if skipped(name):
                rep.layers_skipped.setdefault(name, "matches a skip pattern (left in float)")
                continue
            s, code = _quantize(mods[name], bns.get(name), cfg)
            if s is not None:
                s_all.append(s)
            if cfg.bits <= 8:  # wider grids stay float (exporters store int8/int4 only)
                attach_codes(model, f"{name}.weight", code)
            qnames.append(name)
            qw += mods[name].weight.numel()
    rep.layers_touched = list(dict.fromkeys(list(pruned) + qnames))
    rep.params_after, rep.macs_after = count_params(model), count_macs(model, ex)
    if cfg.bits is not None:
        rep.bits_per_weight = (qw * cfg.bits + (rep.params_after - qw) * 32) / max(rep.params_after, 1)
    rep.extra.update(pruned=pruned, pruned_activation=acts, quantized=qnames, input_shape=list(ex[0].shape),
                     compensation=cfg.compensation)
    if s_all:
        s = torch.cat(s_all)
        rep.extra["s_tilde_range"] = [float(s.min()), float(s.max())]
        if cfg.bits >= 4 and cfg.rescale_quantized and (float(s.min()) < 0.5 or float(s.max()) > 2):
            rep.extra["warnings"] = [f"s̃ outside [0.5, 2]: {rep.extra['s_tilde_range']}"]
    rep.seconds = time.perf_counter() - t0
    return model, rep

