"""Structured-pruning plumbing shared by methods: fx graph tracing, producer->consumer chains, channel slicing.

Shared mechanics only, no method logic. A *chain* is ``conv -> BatchNorm -> act -> (pass-through ops) ->
consumer conv/linear`` found by tracing the graph with torch.fx (never by module order). Pass-through ops
are per-channel and positively homogeneous (dropout, identity, avg/max pooling, spatial mean) or a flatten
that feeds a Linear (channel n then owns the block of ``H*W`` input columns ``n*HW .. (n+1)*HW-1``).
Anything else that reads the channels (add, cat, mul, a second non-consumer user, the output) blocks pruning.
Modules are edited in place (parameters replaced by sliced copies, channel attributes updated), so custom
Conv subclasses (e.g. TF "same"-padding convs) keep their forward and the exported graph really shrinks.
"""
from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..common import trace as _trace

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Identity: "identity"}
ACT_FUNCS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6"}
ACT_METHODS = {"relu": "relu", "relu_": "relu"}
POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.Identity)
POOL_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
              F.adaptive_avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
              F.adaptive_max_pool2d, F.dropout, F.dropout2d}
FLATTEN_METHODS = {"view", "reshape", "flatten"}
BLOCKERS = {operator.add: "a residual add", torch.add: "a residual add", operator.iadd: "a residual add",
            torch.cat: "a concat", torch.concat: "a concat", torch.stack: "a stack"}
_LEAVES = CONV + BN + (nn.Linear, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.Sigmoid,
                       nn.Flatten) + POOL_MODULES


def trace(model: nn.Module) -> fx.GraphModule:
    """fx-trace with every Conv/BN/Linear/activation/pool *subclass* as a leaf (custom padded convs stay one node)."""
    return _trace(model, _LEAVES)




def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    """Record every node's output shape (node.meta['tensor_meta'])."""
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)


def first_conv(model: nn.Module, gm: fx.GraphModule) -> nn.Module | None:
    """The first Conv module in forward order, or None."""
    mods = dict(model.named_modules())
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(mods[n.target], CONV):
            return mods[n.target]
    return None


@dataclass
class Consumer:
    """A conv/linear that reads the producer's channels; `block` input columns per channel (flatten->linear)."""

    name: str
    module: nn.Module
    block: int = 1


@dataclass
class Chain:
    """One conv layer and what follows it. `reason` is None when its output channels may be pruned."""

    name: str
    module: nn.Module
    bn_name: str | None = None
    bn: nn.Module | None = None
    act: str | None = None  # relu | relu6 | identity
    consumers: list[Consumer] = field(default_factory=list)
    reason: str | None = None


def _shape(n: fx.Node):
    meta = n.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _act_kind(n: fx.Node, mods: dict) -> str | None:
    if n.op == "call_module":
        m = mods[n.target]
        if isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6) and (m.min_val, m.max_val) == (0.0, 6.0):
            return "relu6"
        return ACT_MODULES.get(type(m))
    if n.op == "call_function":
        if n.target is F.hardtanh and tuple(n.args[1:3]) == (0.0, 6.0):
            return "relu6"
        return ACT_FUNCS.get(n.target)
    if n.op == "call_method":
        return ACT_METHODS.get(n.target)
    return None


def _describe(n: fx.Node, mods: dict) -> str:
    if n.op == "call_module":
        return f"{type(mods[n.target]).__name__} '{n.target}', which is not a per-channel pass-through"
    if n.op == "output":
        return "the model output"
    t = n.target
    if n.op == "call_function" and t in BLOCKERS:
        return BLOCKERS[t]
    if n.op == "call_method" and t in ("add", "add_"):
        return "a residual add"
    return f"'{getattr(t, '__name__', t)}' ({n.op}), which is not a per-channel pass-through"


def _follow(start: fx.Node, mods: dict, channels: int) -> tuple[list[Consumer], str | None]:
    """Walk from `start` through pass-through ops to conv/linear consumers; (consumers, blocking reason)."""
    consumers: list[Consumer] = []
    stack = [(start, 1)]
    while stack:
        node, block = stack.pop()
        if not node.users:
            return [], "output is unused"
        for u in node.users:
            if u.args[:1] != (node,) or any(node is a for a in list(u.args[1:]) + list(u.kwargs.values())):
                return [], f"channels enter {_describe(u, mods)}"
            m = mods.get(u.target) if u.op == "call_module" else None
            if isinstance(m, CONV):
                if block != 1:
                    return [], f"flattened channels feed conv '{u.target}'"
                if m.groups != 1:
                    return [], f"consumer '{u.target}' is a depthwise/grouped conv (channels are coupled)"
                consumers.append(Consumer(u.target, m, 1))
            elif isinstance(m, nn.Linear):
                shp = _shape(node)
                if shp is None or len(shp) < 2 or shp[-1] != m.in_features:
                    return [], f"cannot map channels to the inputs of linear '{u.target}'"
                if block == 1 and shp[1] != channels:
                    return [], f"linear '{u.target}' does not read the channel dimension"
                consumers.append(Consumer(u.target, m, block))
            elif (m is not None and isinstance(m, POOL_MODULES)) or (u.op == "call_function" and u.target in POOL_FUNCS):
                if block != 1:
                    return [], f"pooling after flatten at '{u.name}'"
                stack.append((u, 1))
            elif (isinstance(m, nn.Flatten) or (u.op == "call_function" and u.target is torch.flatten)
                  or (u.op == "call_method" and u.target in FLATTEN_METHODS)):
                si, so = _shape(node), _shape(u)
                if si is None or so is None or len(so) != 2 or so[0] != si[0] or so[1] != math.prod(si[1:]) \
                        or si[1] != channels:
                    return [], f"'{u.name}' is not a flatten of (batch, channels, ...)"
                stack.append((u, block * math.prod(si[2:])))
            elif u.op == "call_method" and u.target == "mean" and block == 1:
                si, so = _shape(node), _shape(u)
                if si is None or so is None or len(so) < 2 or so[:2] != si[:2]:
                    return [], f"'{u.name}' reduces over the channel dimension"
                stack.append((u, 1))
            else:
                return [], f"channels enter {_describe(u, mods)}"
    if not consumers:
        return [], "no consumer conv/linear"
    return consumers, None


def find_chains(model: nn.Module, gm: fx.GraphModule) -> list[Chain]:
    """Every Conv in forward (topological) order, with its BN, activation and consumers or the reason it can't be pruned."""
    mods = dict(model.named_modules())
    chains, seen = [], set()
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(mods.get(n.target), CONV):
            continue
        conv = mods[n.target]
        if n.target in seen:
            continue
        seen.add(n.target)
        ch = Chain(n.target, conv)
        chains.append(ch)
        if calls[n.target] > 1:
            ch.reason = "module is called more than once"
            continue
        users = list(n.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(mods[users[0].target], BN) \
                and users[0].args[0] is n:
            ch.bn_name, ch.bn = users[0].target, mods[users[0].target]
        if conv.groups != 1:
            ch.reason = "depthwise/grouped conv: quantized only (groups must stay consistent)"
            continue
        if ch.bn is None or not ch.bn.affine or ch.bn.running_var is None:
            ch.reason = "not followed by an affine BatchNorm with running statistics"
            continue
        bn_node = users[0]
        start, ch.act = bn_node, "identity"
        if len(bn_node.users) == 1:
            u = next(iter(bn_node.users))
            kind = _act_kind(u, mods)
            if kind is not None and u.args[0] is bn_node:
                start, ch.act = u, kind
        ch.consumers, ch.reason = _follow(start, mods, conv.out_channels)
    return chains


def bn_fold(conv: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(a = gamma/sigma, K = folded bias) in float64, sigma = sqrt(running_var + eps)."""
    sigma = torch.sqrt(bn.running_var.double() + bn.eps)
    a = bn.weight.detach().double() / sigma
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(a)
    return a, bn.bias.detach().double() + a * (b - bn.running_mean.double())


def act_value(act: str, x: torch.Tensor) -> torch.Tensor:
    """The chain's activation applied to a tensor (for constant channels)."""
    return {"relu": torch.relu, "relu6": lambda t: t.clamp(0, 6), "identity": lambda t: t}[act](x)


def n_keep(n: int, ratio: float, round_to: int = 1) -> int:
    """round((1-r)N) (half up), then *up* to a multiple of `round_to` (never prunes more than asked), at most N."""
    k = math.floor((1.0 - ratio) * n + 0.5)
    if round_to > 1:
        k = round_to * math.ceil(k / round_to)
    return max(min(round_to, n), 1, min(k, n))


def filter_norms(w: torch.Tensor, criterion: str) -> torch.Tensor:
    """l1 or l2 norm of each output filter (over in-channels and kernel)."""
    return w.detach().flatten(1).norm(p=1 if criterion == "l1" else 2, dim=1)


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.to(like.dtype).contiguous(), requires_grad=like.requires_grad)


@torch.no_grad()
def slice_producer(conv: nn.Module, bn: nn.Module | None, keep: torch.Tensor) -> None:
    """Keep only output channels `keep` of a conv and its BN (in place)."""
    conv.weight = _param(conv.weight[keep], conv.weight)
    if conv.bias is not None:
        conv.bias = _param(conv.bias[keep], conv.bias)
    conv.out_channels = len(keep)
    if bn is not None:
        bn.weight = _param(bn.weight[keep], bn.weight)
        bn.bias = _param(bn.bias[keep], bn.bias)
        bn.running_mean = bn.running_mean[keep].clone()
        bn.running_var = bn.running_var[keep].clone()
        bn.num_features = len(keep)


@torch.no_grad()
def merge_consumer(c: Consumer, keep: torch.Tensor, prune: torch.Tensor, S: torch.Tensor | None,
                   const: torch.Tensor | None = None) -> None:
    """W+[:, K] += W+[:, P] @ S (per channel block), bias += sum W+[:, j] * const_j, then keep only K inputs.

    S: (|P|, |K|) merge coefficients (None = drop only). const: (|P|,) constant value of each pruned channel
    (non-zero only for constant channels), folded into the bias, ignoring zero-padding effects at borders.
    """
    m, b = c.module, c.block
    w = m.weight.detach().double()
    o = w.shape[0]
    wv = w.reshape(o, -1, b, *w.shape[2:]).reshape(o, w.shape[1] // b, -1)  # (O, N, block*kernel)
    kept = wv[:, keep]
    if S is not None and len(prune):
        kept = kept + torch.einsum("ojx,jk->okx", wv[:, prune], S.double())
    if const is not None and len(prune) and bool((const != 0).any()):
        add = torch.einsum("ojx,j->o", wv[:, prune], const.double())
        bias = m.bias.detach().double() + add if m.bias is not None else add
        m.bias = _param(bias, m.weight)
    new = kept.reshape(o, len(keep) * b, *w.shape[2:])
    m.weight = _param(new, m.weight)
    if isinstance(m, nn.Linear):
        m.in_features = len(keep) * b
    else:
        m.in_channels = len(keep)


# ---------------------------------------------------------------- data-free channel statistics
_EW_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
               nn.ELU, nn.Hardsigmoid, nn.Mish)
_EW_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.silu, F.hardswish, F.gelu, torch.sigmoid,
             F.sigmoid, torch.tanh, F.leaky_relu, F.elu, F.hardsigmoid, F.mish}
_EW_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
_ADD = {operator.add, torch.add, operator.iadd}
_gh_t, _gh_w = (torch.from_numpy(a) for a in __import__("numpy").polynomial.hermite.hermgauss(48))
_GH_T, _GH_W = _gh_t.double(), _gh_w.double() / math.sqrt(math.pi)

Stats = tuple[torch.Tensor, torch.Tensor]  # per-channel (mean, variance), float64


def gauss_moments(f, mean: torch.Tensor, var: torch.Tensor) -> Stats:
    """Per channel E[f(y)] and Var[f(y)] for y ~ N(mean, var), f elementwise (Gauss-Hermite, 48 nodes)."""
    y = mean[:, None] + torch.sqrt(2 * var.clamp_min(0))[:, None] * _GH_T[None]
    fy = f(y.float()).double()
    e = (fy * _GH_W).sum(1)
    return e, ((fy - e[:, None]) ** 2 * _GH_W).sum(1).clamp_min(0)


def channel_stats(model: nn.Module, gm: fx.GraphModule) -> dict[fx.Node, Stats | None]:
    """Data-free per-channel (mean, variance) of each node's output along dim 1, None where it cannot be modelled.

    Needs node shapes (`propagate_shapes`). The model input is taken as N(0, 1) per channel; a BatchNorm with
    running statistics outputs N(beta, gamma^2) (DFQ's assumption: its statistics describe the data it saw);
    elementwise activations map moments through Gauss-Hermite quadrature; pooling, dropout, identity and a
    spatial mean keep them; flatten repeats them per spatial position; conv/linear without a following BN and adds
    assume independent inputs; mul of independent factors; concat along channels. Anything else is unknown.
    """
    mods = dict(model.named_modules())
    st: dict[fx.Node, Stats | None] = {}
    get = lambda a: st.get(a) if isinstance(a, fx.Node) else None  # noqa: E731
    for n in gm.graph.nodes:
        shp = _shape(n)
        C = shp[1] if shp is not None and len(shp) >= 2 else None
        out: Stats | None = None
        try:
            s = get(n.args[0]) if n.args else None
            m = mods.get(n.target) if n.op == "call_module" else None
            if n.op == "placeholder" and C:
                out = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
            elif isinstance(m, BN):
                if m.affine and m.running_var is not None:
                    out = m.bias.detach().double().clone(), m.weight.detach().double() ** 2
            elif s is None:
                out = _binary(n, get) if n.op != "call_module" else None
                if out is None and n.op == "call_function" and n.target in (torch.cat, torch.concat):
                    out = _concat(n, get)
            elif isinstance(m, _EW_MODULES):
                out = gauss_moments(m, *s)
            elif n.op == "call_function" and n.target in _EW_FUNCS:
                out = gauss_moments(lambda t, n=n: n.target(t, *n.args[1:], **n.kwargs), *s)
            elif n.op == "call_method" and n.target in _EW_METHODS:
                out = gauss_moments(lambda t, n=n: getattr(t, n.target)(), *s)
            elif (isinstance(m, POOL_MODULES) or (n.op == "call_function" and n.target in POOL_FUNCS)
                  or (n.op == "call_method" and n.target == "mean")):
                out = s
            elif isinstance(m, nn.Flatten) or (n.op == "call_function" and n.target is torch.flatten) or (
                    n.op == "call_method" and n.target in FLATTEN_METHODS):
                out = _flatten_stats(n, s)
            elif isinstance(m, CONV + (nn.Linear,)):
                out = _affine_stats(m, s)
            else:
                out = _binary(n, get)
        except Exception:  # noqa: BLE001 - an op we cannot model: its statistics are unknown
            out = None
        st[n] = out if out is not None and C is not None and len(out[0]) == C else None
    return st


def _flatten_stats(n: fx.Node, s: Stats) -> Stats | None:
    si, so = _shape(n.args[0]), _shape(n)
    if si is None or so is None or len(so) != 2 or so[1] != math.prod(si[1:]) or si[1] != len(s[0]):
        return None
    hw = math.prod(si[2:])
    return s[0].repeat_interleave(hw), s[1].repeat_interleave(hw)


def _affine_stats(m: nn.Module, s: Stats) -> Stats:
    """Moments of conv/linear outputs for independent inputs (zero padding ignored)."""
    mu, v = s
    W = m.weight.detach().double()
    b = m.bias.detach().double() if m.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
    if isinstance(m, nn.Linear):
        return W @ mu + b, (W**2) @ v
    g, (O, Cg) = m.groups, W.shape[:2]
    Wg = W.flatten(2).reshape(g, O // g, Cg, -1)
    mean = torch.einsum("gocx,gc->go", Wg, mu.reshape(g, Cg)).reshape(O)
    var = torch.einsum("gocx,gc->go", Wg**2, v.reshape(g, Cg)).reshape(O)
    return mean + b, var


def _concat(n: fx.Node, get) -> Stats | None:
    parts = [get(a) for a in n.args[0]]
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    if dim not in (1, -3) or any(p is None for p in parts):
        return None
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _binary(n: fx.Node, get) -> Stats | None:
    """add / sub / mul of two independent tensors, or of a tensor and a number."""
    t = n.target
    if n.op == "call_method":
        op = {"add": "add", "add_": "add", "sub": "sub", "mul": "mul", "mul_": "mul"}.get(t)
    elif n.op == "call_function":
        op = "add" if t in _ADD else "sub" if t in (operator.sub, torch.sub) else \
            "mul" if t in (operator.mul, torch.mul, operator.imul) else None
    else:
        op = None
    if op is None or len(n.args) != 2 or n.kwargs:
        return None
    a, b = n.args
    sa, sb = get(a), get(b)
    if (isinstance(a, fx.Node) and sa is None) or (isinstance(b, fx.Node) and sb is None):
        return None
    if sa is None or sb is None:  # tensor and a number
        s, c, first = (sa, b, True) if sb is None else (sb, a, False)
        if not isinstance(c, (int, float)) or s is None:
            return None
        if op == "add":
            return s[0] + c, s[1]
        if op == "sub":
            return (s[0] - c, s[1]) if first else (c - s[0], s[1])
        return s[0] * c, s[1] * c * c
    if len(sa[0]) != len(sb[0]):
        return None
    if op == "add":
        return sa[0] + sb[0], sa[1] + sb[1]
    if op == "sub":
        return sa[0] - sb[0], sa[1] + sb[1]
    m = sa[0] * sb[0]
    return m, ((sa[1] + sa[0] ** 2) * (sb[1] + sb[0] ** 2) - m**2).clamp_min(0)
