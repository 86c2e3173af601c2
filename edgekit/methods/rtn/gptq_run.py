"""RTN's `gptq` option: GPTQ codes (edgekit.quant.gptq) for the Linear layers of a model's repeated blocks.

How the calibration runs (the GPTQ paper's layout, one block at a time):
1. the calibration calls (llm_fp4's `calibration_calls`: text windows through the model's tokenizer, or token-id
   rows) are run up to the first block, whose inputs (positional and keyword arguments: hidden states, masks,
   rotary tables) are kept;
2. per block, in order: the block runs on every kept input with a hook on each of its Linear layers that adds the
   layer's input to its Hessian (H = X^T X / n, never the inputs themselves), every Linear gets its GPTQ codes, and
   the block runs again with the quantized weights to give the next block its inputs. So each block is calibrated
   on what the quantized blocks before it produce, and the whole calibration costs two forward passes.
Blocks are the children of the model's ModuleList that holds the most Linear layers (a decoder's or an encoder's
layers). Linear layers outside it (an LM head, a pooler, a classifier) and convolutions keep RTN codes, and the
report says which. A block that returns a tuple passes its first element on (Hugging Face layers).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ...errors import ConfigError, UnsupportedModelError
from ...quant.codes import WeightCode
from ...quant.gptq import gptq_quantize, hessian, output_error


class _Stop(Exception):
    """Raised by the first block's hook once its input is kept."""


def repeated_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, ModuleList) of the list of blocks holding the most Linear layers, or None."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            n = sum(isinstance(m, nn.Linear) for m in mod.modules())
            if n and (best is None or n > best[0]):
                best = (n, name, mod)
    return (best[1], best[2]) if best else None


def _first_block_inputs(model: nn.Module, block: nn.Module, calls: list) -> list[tuple[tuple, dict]]:
    kept: list[tuple[tuple, dict]] = []

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        kw = dict(kwargs)
        for k, v in kwargs.items():  # a KV cache would grow with every re-run of the block and be attended to
            if k in ("past_key_values", "past_key_value", "layer_past") or type(v).__name__.endswith("Cache"):
                kw[k] = None
        if "use_cache" in kw:
            kw["use_cache"] = False
        kept.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), kw))
        raise _Stop

    h = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for args, kw in calls:
                try:
                    model(*args, **kw)
                except _Stop:
                    pass
    finally:
        h.remove()
    if len(kept) != len(calls):
        raise UnsupportedModelError(f"gptq: the first block ran on {len(kept)} of {len(calls)} calibration calls")
    return kept


def _run_block(block: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    """The block's outputs as the next block's inputs (the hidden states replace the first positional argument, or
    the `hidden_states` keyword)."""
    out = []
    with torch.no_grad():
        for args, kw in inputs:
            y = block(*args, **kw)
            y = y[0] if isinstance(y, (tuple, list)) else y
            if args:
                out.append(((y,) + tuple(args[1:]), kw))
            else:
                out.append(((), {**kw, "hidden_states": y}))
    return out


def gptq_blocks(model: nn.Module, calls: list, bits: int, group_size: int | None, damp: float,
                skip: Callable[[str], bool], on_block: Callable[[int, int], None] = lambda i, n: None
                ) -> tuple[dict[str, WeightCode], dict[str, Any]]:
    """GPTQ codes for every non-skipped Linear of the repeated blocks, set into the model as it goes (module doc).
    Returns (codes by module name, record: blocks, layers, output error vs RTN on the calibration inputs)."""
    from ...quant.codes import symmetric_per_channel, symmetric_per_group

    found = repeated_blocks(model)
    if found is None:
        raise ConfigError("gptq: the model has no repeated blocks with Linear layers (a ModuleList of layers, as "
                          "decoders and encoders have); drop --set gptq=true to use RTN")
    list_name, blocks = found
    inputs = _first_block_inputs(model, blocks[0], calls)
    on_block(0, len(blocks))
    codes: dict[str, WeightCode] = {}
    errs: dict[str, dict[str, float]] = {}
    for bi, block in enumerate(blocks):
        lins = {f"{list_name}.{bi}.{n}": m for n, m in block.named_modules()
                if isinstance(m, nn.Linear) and not skip(f"{list_name}.{bi}.{n}")}
        hs: dict[str, list] = {n: [torch.zeros(m.in_features, m.in_features, dtype=torch.float64), 0]
                               for n, m in lins.items()}

        def make(n: str):
            def hook(m: nn.Module, args: tuple) -> None:
                x = args[0].detach().reshape(-1, m.in_features)
                hs[n][0] += hessian(x) * x.shape[0]
                hs[n][1] += x.shape[0]
            return hook

        handles = [m.register_forward_pre_hook(make(n)) for n, m in lins.items()]
        try:
            _run_block(block, inputs)
        finally:
            for h in handles:
                h.remove()
        for n, m in lins.items():
            w = m.weight.data
            if hs[n][1] == 0:
                continue  # never called on the calibration data: left to RTN by the caller
            h = hs[n][0] / hs[n][1]
            g = group_size if group_size and w.shape[1] % group_size == 0 else None
            code = gptq_quantize(w, h, bits, g, damp=damp)
            rtn = symmetric_per_group(w, bits, g) if g else symmetric_per_channel(w, bits, axis=0)
            errs[n] = {"gptq": output_error(w, code.dequantize(), h), "rtn": output_error(w, rtn.dequantize(), h)}
            with torch.no_grad():
                m.weight.copy_(code.dequantize().to(m.weight.dtype))
            codes[n] = code
        inputs = _run_block(block, inputs)
        on_block(bi + 1, len(blocks))
    ratios = sorted(e["gptq"] / e["rtn"] for e in errs.values() if e["rtn"] > 0)
    rec = {"blocks": f"{list_name} ({len(blocks)})", "layers": len(codes), "calibration_calls": len(calls),
           "output_error_vs_rtn": {"median": ratios[len(ratios) // 2] if ratios else None,
                                   "max": ratios[-1] if ratios else None,
                                   "what": "per layer, GPTQ's mean squared output error on its calibration inputs "
                                           "over RTN's (same grid)"}}
    return codes, rec
