"""Calibration plumbing of LLM-FP4: text/tensor data -> forward calls, and capture of linear inputs a group at a time."""
from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError


class _Stop(Exception):
    """Raised by a capture hook once every layer of the group has seen its input."""


def _find_tokenizer(model: nn.Module, cfg: Any) -> Any:
    """cfg.tokenizer, else the folder the HF model was loaded from."""
    from transformers import AutoTokenizer

    paths = [cfg.tokenizer] if cfg.tokenizer else []
    for m in model.modules():
        p = getattr(getattr(m, "config", None), "name_or_path", None) or getattr(getattr(m, "config", None),
                                                                               "_name_or_path", None)
        if p and os.path.isdir(p):
            paths.append(p)
    for p in paths:
        try:
            return AutoTokenizer.from_pretrained(p, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:  # a config folder without tokenizer files
            if p == cfg.tokenizer:
                raise ConfigError(f"llm_fp4: cannot load a tokenizer from {p} ({str(e).splitlines()[0][:120]}); "
                                  "pass --set tokenizer=DIR with tokenizer.json") from None
    raise ConfigError("llm_fp4: text calibration data needs a tokenizer; pass --set tokenizer=DIR (a folder with "
                      "tokenizer.json), or calibrate with a .npy of token ids")


def _call_kwargs(model: nn.Module, ids: torch.Tensor) -> tuple[tuple, dict]:
    """How to feed token ids: by name input_ids when the model takes it, with an all-ones attention_mask."""
    params = inspect.signature(model.forward).parameters
    kw: dict[str, Any] = {}
    if "input_ids" in params:
        kw["input_ids"] = ids
        args: tuple = ()
    else:
        args = (ids,)
    if "attention_mask" in params:
        kw["attention_mask"] = torch.ones_like(ids)
    if "use_cache" in params:
        kw["use_cache"] = False
    return args, kw


def calibration_calls(model: nn.Module, cfg: Any, data: Any) -> list[tuple[tuple, dict]]:
    """The forward calls of calibration (deterministic for a given data source and seed)."""
    if data is None or len(data) == 0:
        raise ConfigError("llm_fp4 needs calibration data; pass --data calib.txt (text) or .npy (token ids/inputs)")
    gen = torch.Generator().manual_seed(cfg.seed)
    if data.texts:
        tok = _find_tokenizer(model, cfg)
        ids = torch.tensor(tok("\n\n".join(data.texts))["input_ids"], dtype=torch.int64)
        L = min(cfg.seq_len, len(ids))
        hi = len(ids) - L + 1
        starts = torch.randint(0, hi, (cfg.n_seqs,), generator=gen).tolist() if hi > cfg.n_seqs else \
            list(range(0, hi, max(1, L)))[: cfg.n_seqs]
        return [_call_kwargs(model, ids[s:s + L].unsqueeze(0)) for s in starts]
    calls = []
    if data.tensors[0].dtype in (torch.int64, torch.int32):  # token ids: one row = one sequence
        for batch in data.batches(batch_size=1, limit=cfg.n_seqs):
            calls.append(_call_kwargs(model, batch[0].reshape(1, -1).long()))
    else:  # float rows count as tokens: the same token budget as text, in batches of seq_len rows
        for batch in data.batches(batch_size=cfg.seq_len, limit=cfg.n_seqs * cfg.seq_len):
            calls.append((tuple(b.float() if b.is_floating_point() else b for b in batch), {}))
    return calls


def capture(model: nn.Module, calls: list, mods: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """Inputs of the group's linears over all calibration calls, (tokens, in_features) each."""
    store: dict[str, list[torch.Tensor]] = {n: [] for n in mods}
    fired: set[str] = set()

    def make(n: str):
        def hook(m: nn.Module, args: tuple) -> None:
            store[n].append(args[0].detach().reshape(-1, m.in_features).float().clone())
            fired.add(n)
            if len(fired) == len(mods):
                raise _Stop
        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in mods.items()]
    try:
        with torch.no_grad():
            for args, kw in calls:
                fired.clear()
                try:
                    model(*args, **kw)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in store.items() if v}
