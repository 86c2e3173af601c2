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

from ..errors import UnsupportedModelError

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


class _Tracer(fx.Tracer):
    """Treats every Conv/BN/Linear/activation/pool *subclass* as a leaf (custom padded convs stay one node)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace `model`; UnsupportedModelError (with the reason) when torch.fx cannot."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "cannot analyse this graph"
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {msg}); "
            "a traceable graph is needed to find producer/consumer pairs") from None
    return fx.GraphModule(model, graph)


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
