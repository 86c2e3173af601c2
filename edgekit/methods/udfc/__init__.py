"""UDFC (Bai, Chen et al., ICCV 2023): data-free structured pruning + k-bit quantization, closed-form compensation.

Spec: shared/methods/udfc.md. Pruned filters are re-routed into kept channels of the consumer layer (ŝ, Eq. 20);
quantized filters can get a per-channel gain s̃ (Eq. 14) folded into the BatchNorm after them. No data, no gradients.

Defaults differ from the paper where measurements said so (issue 21; `paper=true` restores the published method,
any option given explicitly wins). Figures: top-1 agreement / logit cosine with FP32 on 1,000 held-out images,
benchmarks/udfc.py parts `zoo` (MobileNetV2-, EfficientNet-B- (SiLU + SE), VGG-style nets and ResNet-20, trained
on Fashion-MNIST) and `zoo_lite0` (EfficientNet-Lite0's ImageNet logits on Fashion images), results/udfc.json.
- ratio=0 (quantization only). Pruning without fine-tuning lost to not pruning on every network tried: r=0.3 at
  W8 gave ResNet-20 0.872, VGG 0.925, MobileNetV2 0.993, Lite0 0.737 where RTN W8 keeps 1.000/1.000/0.995/0.800.
  Pruning is opt-in (`ratio=0.3`).
- grid=midtread (RTN's symmetric grid with an exact zero). The paper's zero-free grid sends an exact-zero weight
  to +Δ/2 (round half to even lands on the code above zero), so every zero adds the same positive error and BN's
  γ/σ amplifies the output shift. With the 30% smallest weights of each layer set to 0 (a sparse checkpoint), the
  pre-issue-21 default (per-channel mid-rise + s̃) gave Lite0 W6 0.000 / W8 0.511 where RTN keeps 0.289 / 0.818
  (ResNet-20 W6 0.944 vs 0.999, VGG 0.963 vs 0.997); the default now gives 0.695 / 0.845. Lite0 as shipped has
  6,127 exact zeros; many more in a checkpoint is our best explanation of issue 21's W6 collapse (0.05 vs RTN
  0.40) on a second EfficientNet, whose weights we do not have.
- bias_correction=true: from BN statistics alone (a BN outputs N(β, γ²); moments go through activations by
  Gauss-Hermite quadrature and through adds, concats, pools and flatten: `prune.channel_stats`), a quantized
  layer keeps its expected output (BN β or its bias absorbs the shift; DFQ's analytic bias correction, Nagel et
  al. 2019), and a pruned channel's expected value minus what the kept channels re-route (E[x_j] − Σ ŝ_ji E[x_i])
  goes into the consumer bias (the γ≈0 constant fold is the special case). Layers whose input statistics are
  unknown (ops not modelled) stay uncorrected; `bias_corrected` counts the others. With the defaults the
  quantized weights are exactly RTN's, so this is the whole difference to RTN: Lite0 W8/W6/W5/W4 0.800/0.272/
  0.134/0.008 -> 0.907/0.593/0.391/0.078. Pruning r=0.3, W8 (pre-issue-21 default -> default): ResNet-20 0.467 ->
  0.872, VGG 0.580 -> 0.925. It is not free where the Gaussian model is off: VGG W4 0.973/0.9964 vs RTN
  0.974/0.9971, ResNet-20 sparse W6 0.995 vs 0.999 (cosine 0.9996 vs 0.9995).
- gain=false. Folding s̃ on top put W4 below RTN on ResNet-20 (0.974/0.9953 vs 0.978/0.9972) and VGG
  (0.967/0.9940 vs 0.974/0.9971), and Lite0 W4 at 0.065/0.515 (without: 0.078/0.600); elsewhere within ±0.004.
  s̃ = ⟨R̃,R⟩/‖R̃‖² is the least-squares gain: on a grid with zero the rounding error is nearly orthogonal to R,
  so s̃ ≈ ‖R‖²/(‖R‖² + ‖e‖²) < 1 shrinks every channel and the shrinkage compounds over layers. The zero-free grid
  inflates small weights, which s̃ < 1 undoes: that is where the paper needs it. gain=true folds s̃ into γ and β
  (exact for any activation, also before adds: it scales the pre-activation that ℓq models).
- prune_linear=false: a conv whose BN feeds no activation (the linear bottleneck of MobileNetV2/EfficientNet) is
  not pruned. Its channels are the block output, the kept filters cannot span the pruned ones (d = C·K² >> N), and
  neither ŝ nor drop-only recovers them: pruning 30% of Lite0's `_blocks.15._project_conv` alone gave 0.361
  (udfc) / 0.365 (drop), `_blocks.0._project_conv` 0.510 / 0.595, against 0.734 / 0.667 for the head conv (ReLU6).
  The three together (6% of MACs) gave 0.219: issue 21's "4.7% of MACs halves agreement". The spec's pruning scope
  (§5) is BN+ReLU chains; prune_linear=true is our first implementation's extension, which paper=true keeps.
- per_channel=true: one M per output channel (per tensor, the paper's method gives Lite0 W6 0.027).

Other decisions where the paper/spec leaves room:
- Graph: producer/consumer pairs come from a torch.fx trace (conv/BN/linear/activation subclasses are leaves).
  A conv's channels are pruned only when conv -> BN -> ReLU | ReLU6 (| identity with prune_linear) reaches
  conv/linear consumers through per-channel ops (dropout, avg/max pool, spatial mean, flatten into a linear).
  Channels entering an add, a concat or any other op are never pruned; depthwise/grouped producers and
  consumers are not pruned (they are quantized). Untraceable models raise UnsupportedModelError before any work.
- All pruning runs first (forward order), then all quantization; ŝ uses FP weights only. Statistics for bias
  correction are taken after pruning (the kept channels' BN parameters), before any layer is quantized.
- Kept count: round((1-r)N) rounding half up (not NM's int()), then up to a multiple of `round_to`.
- γ≈0 channels (|γ| <= 1e-8 max|γ|) output the constant act(β): they are pruned first and their constant is
  folded into the consumer bias (zero-padding border effects ignored, as the spec says); they are never solved.
- ŝ: the Eq. 20 closed form with ridge λ = eps_ridge·tr(QᵀQ)/|𝒦|, solved in float64 for all pruned channels at
  once (one Cholesky + Sherman-Morrison per rank-one α1 term); lstsq when eps_ridge=0; NNLS when nonneg=True.
- The ReLU6 re-route is approximate (ReLU6 is not positively homogeneous above 6); such chains are pruned and
  the activation of every pruned layer is reported.
- Mid-rise codes are stored as q' = n − 2^(k−1) with an offset M/(2^k−1) (spec §10); bits ≤ 8 store as int8,
  ≤ 4 int4; bits up to 16 are accepted (spec §8.1) but stay float above 8. Layers without a following BN
  (heads, SE convs) get s̃ = 1; their bias absorbs the bias correction (a bias is added where there was none).
- A safety check that chose drop-only over ŝ per layer on a data-free Gaussian proxy (white layer input, BN
  marginals) was tried during issue 21 and removed: in a diagnostic run (500 images) it fired only on Lite0's
  head conv, and wrongly (agreement 0.734 with ŝ, 0.668 with its choice).
- The NM baseline (`compensation="nm"`) is one-hot Neuron Merging on BN-folded filters R = (γ/σ)W: nearest kept
  filter by cosine, scale ‖R_j‖/‖R_i‖, dropped when the cosine is ≤ 0. `compensation="none"` is drop-only.
- Input: `example_inputs` (edgekit compress passes its input spec) > `input_shape` > (1, C_in of the first conv,
  224, 224), then 64 and 32 pixels when the model rejects 224; the report records the one used. `data` is
  ignored (the method is data-free).
"""
from __future__ import annotations

import re
import time
from collections import Counter
from typing import Literal, Sequence

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from ...errors import UnsupportedModelError
from ...flops import count_macs, count_params
from . import prune as P
from ...quant.codes import WeightCode, attach_codes, clear_codes
from ..common import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "none"
SUMMARY = "UDFC: data-free structured pruning + k-bit quantization with closed-form compensation (ICCV 2023)"
MODELS = ("cnn",)
_GAMMA_EPS = 1e-8


PAPER = {"per_channel": False, "grid": "midrise", "gain": True, "bias_correction": False, "prune_linear": True}


class Config(BaseModel, extra="forbid"):
    """Options of UDFC."""

    ratio: float = Field(0.0, ge=0.0, lt=0.95, description="fraction of output channels pruned in each prunable conv "
                         "(default 0: quantization only; the paper used 0.1-0.8)")
    criterion: Literal["l1", "l2"] = Field("l2", description="filter-norm criterion that picks the kept channels")
    bits: int | None = Field(6, ge=2, le=16, description="weight bits (None: no quantization)")
    grid: Literal["midtread", "midrise"] = Field(
        "midtread", description="midtread: symmetric grid with an exact zero (2^k-1 levels, RTN's); midrise: the "
        "paper's Eq. 3 grid without zero (2^k levels)")
    per_channel: bool = Field(True, description="per-output-channel max M (default; see docstring) instead of the "
                              "paper's per-tensor M (false)")
    gain: bool = Field(False, description="fold the per-channel gain s̃ (Eq. 14) into BN after quantizing (paper: "
                       "true; measured to hurt on the zero grid, see docstring)")
    bias_correction: bool = Field(
        True, description="data-free expected-value corrections from BatchNorm statistics: a quantized layer keeps "
        "its expected output, pruned channels leave their expected contribution in the consumer bias (paper: false)")
    prune_linear: bool = Field(
        False, description="also prune convs whose BN feeds no activation (linear bottlenecks: MobileNet/EfficientNet "
        "project convs); the spec's scope is BN+ReLU only, our first implementation pruned them (paper=true does)")
    paper: bool = Field(False, description="the published method as first implemented here: per_channel=false, "
                        "grid=midrise, gain=true, bias_correction=false, prune_linear=true, each unless given "
                        "explicitly (ratio stays as given)")
    alpha1: float = Field(0.01, ge=0.0, description="weight of the bias term in the pruning loss (paper: 0.01)")
    alpha2: float = Field(0.008, ge=0.0, description="weight of the bias term in the quantization loss (paper: 0.008)")
    rescale_quantized: bool = Field(True, description="keep quantized weights at scale M (else s̃ absorbs M)")
    nonneg: bool = Field(False, description="constrain merge coefficients ŝ >= 0 (NNLS) instead of the closed form")
    eps_ridge: float = Field(1e-6, ge=0.0, description="ridge λ = eps_ridge·tr(QᵀQ)/|kept| against rank deficiency")
    round_to: int = Field(1, ge=1, description="round kept-channel counts up to a multiple of this (8/16 help runtimes)")
    skip: list[str] = Field(default_factory=list, description="regexes of module names to leave unpruned and in float")
    compensation: Literal["udfc", "nm", "none"] = Field(
        "udfc", description="pruning compensation: udfc closed form, nm one-hot Neuron Merging, none drop-only")
    input_shape: list[int] | None = Field(None, description="example input shape for tracing and MAC counts when "
                                          "called without example inputs (edgekit compress passes its input spec)")

    @model_validator(mode="after")
    def _paper_preset(self) -> "Config":
        if self.paper:
            for k, v in PAPER.items():
                if k not in self.model_fields_set:
                    object.__setattr__(self, k, v)
        return self


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


def midtread_quantize(w: torch.Tensor, bits: int, M: torch.Tensor, base: torch.Tensor | None = None) -> WeightCode:
    """Codes of W on the symmetric grid with zero, levels n·M/(2^(k-1)-1), |n| <= 2^(k-1)-1 (RTN's grid)."""
    qmax = 2 ** (bits - 1) - 1
    shape = (-1,) + (1,) * (w.dim() - 1)
    Mb = torch.where(M > 0, M, torch.ones_like(M)).reshape(shape if M.dim() else ())
    n = torch.round(w.detach().double() / Mb.double() * qmax).clamp(-qmax, qmax)
    base = M if base is None else base
    return WeightCode(codes=n.to(torch.int32 if bits > 15 else torch.int16), scale=(base.double() / qmax).float(),
                      axis=0 if M.dim() else None, bits=bits)


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


def _act_mean(act: str, bn: nn.Module) -> torch.Tensor:
    """Expected post-activation value of each channel for BN outputs N(β, γ²) (float64)."""
    return P.gauss_moments(lambda t: P.act_value(act, t), bn.bias.detach().double(),
                           bn.weight.detach().double() ** 2)[0]


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
    if cfg.bias_correction:  # what the re-routed channels miss on average goes into the consumer bias
        mean = _act_mean(ch.act, ch.bn)
        cvals = mean[prune] - S @ mean[keep]
    else:  # constant (γ≈0) channels only
        cvals = torch.where(const[prune], P.act_value(ch.act, K[prune]), torch.zeros(len(prune), dtype=torch.float64))
    for c in ch.consumers:
        P.merge_consumer(c, keep, prune, S, cvals)
    P.slice_producer(conv, ch.bn, keep)
    return N, k


def _wsum(mod: nn.Module, w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per output channel Σ_{c,kernel} w[o, c, ·]·m[c] (float64): a layer's mean output for input channel means m."""
    w = w.double()
    if isinstance(mod, nn.Linear):
        return w @ m
    g, (O, Cg) = mod.groups, w.shape[:2]
    return torch.einsum("gocx,gc->go", w.flatten(2).reshape(g, O // g, Cg, -1), m.reshape(g, Cg)).reshape(O)


def _expected(mod: nn.Module, bn: nn.Module | None, w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Expected output (after BN when given) of `mod` with weight w for input channel means m."""
    if bn is None:
        b = mod.bias.detach().double() if mod.bias is not None else 0.0
        return _wsum(mod, w, m) + b
    a, K = P.bn_fold(mod, bn)
    return a * _wsum(mod, w, m) + K


@torch.no_grad()
def _quantize(mod: nn.Module, bn: nn.Module | None, cfg: Config, in_mean: torch.Tensor | None = None
              ) -> tuple[torch.Tensor | None, WeightCode]:
    """Put `mod.weight` on the k-bit grid; fold s̃ into `bn` if given; with `in_mean` (input channel means) keep
    the expected output (BN β or the layer bias absorbs the shift). Returns (s̃ or None without BN, codes)."""
    w = mod.weight.detach()
    M = w.abs().flatten(1).amax(1) if cfg.per_channel else w.abs().max()
    base = M if (cfg.rescale_quantized or bn is None or not cfg.gain) else torch.ones_like(M)
    code = (midrise_quantize if cfg.grid == "midrise" else midtread_quantize)(w, cfg.bits, M, base)
    wt = code.dequantize().to(w.dtype)
    e0 = _expected(mod, bn, w, in_mean) if in_mean is not None else None
    s = None
    if bn is not None and cfg.gain:
        a, K = P.bn_fold(mod, bn)
        s = quant_scale(a[:, None] * w.double().flatten(1), a[:, None] * wt.double().flatten(1), K, cfg.alpha2)
        bn.weight.mul_(s.to(bn.weight.dtype))
        bn.bias.mul_(s.to(bn.bias.dtype))
    mod.weight.copy_(wt)
    if e0 is not None:
        shift = _expected(mod, bn, wt, in_mean) - e0
        if bn is not None:
            bn.bias.sub_(shift.to(bn.bias.dtype))
        elif mod.bias is not None:
            mod.bias.sub_(shift.to(mod.bias.dtype))
        else:
            mod.bias = nn.Parameter((-shift).to(w.dtype), requires_grad=mod.weight.requires_grad)
    return s, code


def _input_means(model: nn.Module, gm, ex, names: set[str]) -> dict[str, torch.Tensor]:
    """Data-free input channel means of the named layers (current weights and BN statistics), where known."""
    P.propagate_shapes(gm, ex)  # channel counts may have changed by pruning
    st = P.channel_stats(model, gm)
    mods = dict(model.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    out = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target in names and calls[n.target] == 1 and n.args:
            s, m = st.get(n.args[0]) if isinstance(n.args[0], torch.fx.Node) else None, mods[n.target]
            need = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            if s is not None and len(s[0]) == need and bool(torch.isfinite(s[0]).all()):
                out[n.target] = s[0]
    return out


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
        elif ch.act == "identity" and not cfg.prune_linear:
            rep.layers_skipped[ch.name] = ("not pruned: no activation after its BatchNorm (a linear bottleneck: "
                                           "its channels carry the block's output; prune_linear=true prunes it)")
        elif cfg.ratio > 0 and (nk := _prune_chain(ch, cfg)) is not None:
            pruned[ch.name], acts[ch.name] = list(nk), ch.act
    qnames, s_all, qw = [], [], 0
    if cfg.bits is not None:
        mods = dict(model.named_modules())
        bns = {ch.name: ch.bn for ch in chains  # s̃ and BN-side corrections need an affine BN with statistics
               if ch.bn is not None and ch.bn.affine and ch.bn.running_var is not None}
        layers = dict.fromkeys([ch.name for ch in chains] + [n.target for n in gm.graph.nodes if n.op == "call_module"
                                                             and isinstance(mods[n.target], nn.Linear)])
        in_means = _input_means(model, gm, ex, set(layers)) if cfg.bias_correction else {}
        for name in layers:
            if skipped(name):
                rep.layers_skipped.setdefault(name, "matches a skip pattern (left in float)")
                continue
            s, code = _quantize(mods[name], bns.get(name), cfg, in_means.get(name))
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
    if cfg.bits is not None and cfg.bias_correction:
        rep.extra["bias_corrected"] = sum(name in in_means for name in qnames)
    if s_all:
        s = torch.cat(s_all)
        rep.extra["s_tilde_range"] = [float(s.min()), float(s.max())]
        if cfg.bits >= 4 and cfg.rescale_quantized and (float(s.min()) < 0.5 or float(s.max()) > 2):
            rep.extra["warnings"] = [f"s̃ outside [0.5, 2]: {rep.extra['s_tilde_range']}"]
    rep.seconds = time.perf_counter() - t0
    return model, rep

