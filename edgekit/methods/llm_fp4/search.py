"""Per-layer format + bias search of LLM-FP4 (spec §3-4): layer-output MSE, weights per row, activations per tensor.

Decisions (why):
- Candidates: "bias" grid = the official code (b = c·b_init, c = g1 + i(g2-g1)/n, i < n); "max" grid = the paper's
  wording (clipping max = a·absmax, a evenly spaced in [alpha_min, 1], i.e. b = b_init - log2 a). Both always
  include the unsearched min-max candidate (c = 1 / a = 1), and the grid is fixed per layer, so every round can
  only lower the objective: the result is never worse than min-max in the starting format (tested).
- Round order: W biases for every format (A fixed) -> pick the W format; A bias for every format (W fixed) ->
  pick the A format. The code picks both formats at the end of the round; picking right after each half-step
  is what makes the monotonicity guarantee above hold. Rounds after the first refine only the chosen formats
  (the code re-searches all of them): a third of the cost, and still monotone.
- FPQ shifts: k_j = clip(round(b~_j) - round(rho), 0, 2^E-1) (the code) from the per-channel max b~_j over all
  calibration tokens, recomputed for each rho candidate; unit u_j = u(rho)·2^-k_j (exact power-of-two shift).
  The code's rounding can shift a channel one binade too far (clips it to ~half its range): good at 4 bits
  (where clipping pays), bad at 8 bits in our toy runs. floor(b~_j - rho) never over-clips. Default "search"
  evaluates both for every rho candidate and keeps the lower MSE (the code's rule is the starting point).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ...quant import fp as F
from ...quant.act import ActQ


@dataclass
class SearchOpts:
    """Search budget and variant (see llm_fp4.Config for the meaning of each field)."""

    variant: str = "fpq"  # fpq | fpq_baseline | minmax | minmax_int
    w_bits: int = 4
    a_bits: int | None = 4
    grid: str = "max"
    n_candidates: int = 20
    rounds: int = 2
    gamma: tuple[float, float] = (0.01, 1.2)
    alpha_min: float = 0.3
    w_formats: list[F.Format] | None = None
    a_formats: list[F.Format] | None = None
    shift_round: str = "search"  # floor(b~_j - rho) | code: round(b~_j) - round(rho) | search: both, by MSE
    a_headroom: int = 0  # FPQ shifts lowered by this many binades (channel j keeps 2^h x its calibration max)


@dataclass
class WeightQ:
    """Quantized weight as codes·unit per row (units are the DequantizeLinear scales)."""

    kind: str
    fmt: F.Format
    codes: torch.Tensor  # float tensor of integers, weight shape
    unit: torch.Tensor  # (out,)
    stats: dict = field(default_factory=dict)

    def weight(self) -> torch.Tensor:
        """codes·unit in float32, the exact value the ONNX DequantizeLinear reproduces."""
        return self.codes.to(torch.float32) * self.unit.to(torch.float32)[:, None]

    def cpu(self) -> WeightQ:
        return WeightQ(self.kind, self.fmt, self.codes.cpu(), self.unit.cpu(), self.stats)


def candidates(b0: torch.Tensor, opts: SearchOpts) -> list[torch.Tensor]:
    """Candidate biases for initial (min-max) bias b0; the first one is b0 itself."""
    n = max(int(opts.n_candidates), 0)
    if opts.grid == "bias":
        g1, g2 = opts.gamma
        cs = [g1 + i * (g2 - g1) / n for i in range(n)]
        return [b0] + [b0 * c for c in cs if abs(c - 1.0) > 1e-12]
    alphas = [opts.alpha_min + i * (1 - opts.alpha_min) / max(n - 1, 1) for i in range(n)]
    return [b0] + [b0 - math.log2(a) for a in alphas if a < 1.0 - 1e-12]


def quant_weight_fp(w: torch.Tensor, fmt: F.Format, b: torch.Tensor) -> WeightQ:
    """Per-row FP quantization with row biases b (float64)."""
    E, M = fmt
    u = F.unit(b, M)
    codes = F.fp_codes(w / u[:, None], E, M)
    return WeightQ("fp", fmt, codes, u)


def quant_weight_int(w: torch.Tensor, bits: int) -> WeightQ:
    """Symmetric per-row min-max INT quantization (the MinMax INT baseline)."""
    qmax = 2 ** (bits - 1) - 1
    amax = w.abs().amax(1)
    u = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).to(torch.float32)
    return WeightQ("int", (0, 0), F.int_codes(w / u[:, None], qmax), u)


def act_quant(fmt: F.Format, rho: torch.Tensor, bt: torch.Tensor | None, shift_round: str = "floor",
              headroom: int = 0) -> ActQ:
    """FP activation quantizer with tensor bias rho, plus FPQ shifts when per-channel biases bt are given; headroom
    lowers every shift by that many binades (a channel then clips only above 2^headroom x its calibration max)."""
    E, M = fmt
    u0 = F.unit(rho.reshape(1), M)
    if bt is None:
        return ActQ("fp", fmt, u0, float(rho))
    k = torch.floor(bt - rho) if shift_round == "floor" else torch.round(bt) - torch.round(rho)
    k = torch.clamp(k - headroom, 0, 2 ** E - 1)
    return ActQ("fp", fmt, u0 * torch.exp2(-k).to(torch.float32), float(rho), k.to(torch.int32))


def apply_act(x: torch.Tensor, a: ActQ | None) -> torch.Tensor:
    """Fake-quantize activations x (T, in)."""
    if a is None:
        return x
    return F.quant_units(x, a.unit, a.fmt[0], a.fmt[1], a.kind, a.qmax)


def _init_act(f: F.Format, xmax_ch: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rho0, per-channel biases or None) for format f: rho0 = min-max bias of the largest channel."""
    bt = F.bias_from_max(xmax_ch, *f)
    return bt.min(), (bt if variant == "fpq" else None)


def search_subset(x: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows, token weights) for the MSE objective: all of x when it has <= n rows; else the n//8 rows with the
    largest |x| (always) plus a seeded random draw of the rest, weighted so the weighted MSE estimates the MSE over
    all of x without bias. A plain random draw usually misses the few outlier tokens (e.g. an LLM's first-position
    "massive activations") that set the ranges; the search then sees no cost in clipping them."""
    T = x.shape[0]
    if T <= n:
        return x, None
    m = max(1, n // 8)
    top = x.abs().amax(1).topk(m).indices.cpu()
    rest = torch.ones(T, dtype=torch.bool)
    rest[top] = False
    rest = rest.nonzero().squeeze(1)
    pick = rest[torch.randperm(len(rest), generator=gen)[: n - m]]
    idx = torch.cat([top, pick])
    order = idx.argsort()
    wts = torch.cat([torch.full((m,), 1.0 / T), torch.full((n - m,), (T - m) / ((n - m) * T))])
    return x[idx[order].to(x.device)], wts[order].to(device=x.device, dtype=x.dtype)


def search_layer(w: torch.Tensor, x: torch.Tensor, xmax_ch: torch.Tensor, opts: SearchOpts,
                 weights: torch.Tensor | None = None) -> tuple[WeightQ, ActQ | None]:
    """Quantize one linear: w (out, in), x (T, in) calibration inputs, xmax_ch (in,) max |x| over all tokens;
    weights (T,), summing to 1: per-token weights of the MSE (None: plain mean)."""
    w, x = w.detach().float(), x.detach().float()
    y = x @ w.T
    aq = opts.a_bits is not None
    tw = None if weights is None else weights.float()[:, None]

    def mse(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:  # per output channel
        d = (xq @ wq.T - y) ** 2
        return d.mean(0) if tw is None else (d * tw).sum(0)

    if opts.variant == "minmax_int":
        wq = quant_weight_int(w, opts.w_bits)
        act = None
        if aq:
            qmax = 2 ** (opts.a_bits - 1) - 1
            act = ActQ("int", (0, 0), (xmax_ch.max().clamp_min(1e-8) / qmax).reshape(1).float(), qmax=qmax)
        e = float(mse(apply_act(x, act), wq.weight()).mean())
        wq.stats = {"mse": e, "mse_minmax": e}
        return wq, act

    wf0, af0 = F.default_format(opts.w_bits), F.default_format(opts.a_bits or 8)
    w_fmts = opts.w_formats or F.formats_for(opts.w_bits)
    a_fmts = (opts.a_formats or F.formats_for(opts.a_bits)) if aq else []
    if opts.variant == "minmax":
        w_fmts, a_fmts = [wf0], ([af0] if aq else [])
    if wf0 not in w_fmts:
        wf0 = w_fmts[0]
    if aq and af0 not in a_fmts:
        af0 = a_fmts[0]
    absw = w.abs().amax(1)
    bw0 = {f: F.bias_from_max(absw, *f) for f in w_fmts}
    ainit = {f: _init_act(f, xmax_ch, opts.variant) for f in a_fmts}
    bw = dict(bw0)
    rho = {f: ainit[f][0] for f in a_fmts}
    modes = ["code", "floor"] if opts.shift_round == "search" else [opts.shift_round]
    mode = {f: modes[0] for f in a_fmts}
    wf, af = wf0, af0
    cur_act = act_quant(af, rho[af], ainit[af][1], mode[af], opts.a_headroom) if aq else None
    cur_w = quant_weight_fp(w, wf, bw[wf]).weight()
    e0 = float(mse(apply_act(x, cur_act), cur_w).mean())
    search = opts.variant != "minmax"
    rounds = opts.rounds if (search and aq) else (1 if search else 0)
    for rnd in range(rounds):
        xq = apply_act(x, cur_act)
        w_err = {}
        for f in (w_fmts if rnd == 0 else [wf]):
            best_e, best_b = None, None
            for b in candidates(bw0[f], opts):
                e = mse(xq, quant_weight_fp(w, f, b).weight())
                if best_e is None:
                    best_e, best_b = e, b.clone()
                else:
                    better = e < best_e
                    best_e = torch.where(better, e, best_e)
                    best_b = torch.where(better, b, best_b)
            bw[f], w_err[f] = best_b, float(best_e.mean())
        wf = min(w_err, key=lambda f: w_err[f])
        cur_w = quant_weight_fp(w, wf, bw[wf]).weight()
        if not aq:
            break
        a_err = {}
        for f in (a_fmts if rnd == 0 else [af]):
            r0, bt = ainit[f]
            best = None
            for r in candidates(r0, opts):
                for md in (modes if bt is not None else modes[:1]):
                    e = float(mse(apply_act(x, act_quant(f, r, bt, md, opts.a_headroom)), cur_w).mean())
                    if best is None or e < best[0]:
                        best = (e, r, md)
            a_err[f], rho[f], mode[f] = best
        af = min(a_err, key=lambda f: a_err[f])
        cur_act = act_quant(af, rho[af], ainit[af][1], mode[af], opts.a_headroom)
    wq = quant_weight_fp(w, wf, bw[wf])
    e = float(mse(apply_act(x, cur_act), wq.weight()).mean())
    wq.stats = {"mse": e, "mse_minmax": e0}
    return wq, cur_act


def search_embedding(w: torch.Tensor, bits: int, opts: SearchOpts) -> WeightQ:
    """Per-row bias search on weight MSE (data-free), format chosen per table (spec §3, fp_embed)."""
    w = w.detach().float()
    if opts.variant == "minmax_int":
        return quant_weight_int(w, bits)
    fmts = [F.default_format(bits)] if opts.variant == "minmax" else (opts.w_formats or F.formats_for(bits))
    absw = w.abs().amax(1)
    best_total, best_q = None, None
    for f in fmts:
        b0 = F.bias_from_max(absw, *f)
        cands = [b0] if opts.variant == "minmax" else candidates(b0, opts)
        be, bb = None, None
        for b in cands:
            e = ((quant_weight_fp(w, f, b).weight() - w) ** 2).mean(1)
            if be is None:
                be, bb = e, b.clone()
            else:
                bb = torch.where(e < be, b, bb)
                be = torch.minimum(e, be)
        if best_total is None or float(be.mean()) < best_total:
            best_total, best_q = float(be.mean()), quant_weight_fp(w, f, bb)
    best_q.stats = {"mse": best_total}
    return best_q
