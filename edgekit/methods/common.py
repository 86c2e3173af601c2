"""Helpers every method shares: the MethodReport, the compute device, fx tracing, and text -> tokens.

A method's own helpers live in its folder (edgekit/methods/<name>/); only what two or more methods use is here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from ..quant.precision import Precision


@dataclass
class MethodReport:
    """Parameters/FLOPs before and after, bits per weight, touched and skipped layers, timing, extras.

    `export_precision` picks the validation tolerance of every export (act_quant for quantized activations).
    """

    method: str
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    bits_per_weight: float = 32.0
    layers_touched: list[str] = field(default_factory=list)
    layers_skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    export_precision: Precision = "fp32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for the manifest."""
        return asdict(self)



def check_new_safetensors(path: str | None, option: str) -> Path | None:
    """A save option's file: a .safetensors name in an existing folder that does not exist yet (edgekit never
    overwrites a file it did not create); checked before any work."""
    if not path:
        return None
    p = Path(path)
    if p.suffix != ".safetensors":
        raise ConfigError(f"{option} {p}: use a .safetensors file name")
    if p.exists():
        raise ConfigError(f"{option} {p} exists; edgekit does not overwrite it: choose a new path")
    if not p.parent.is_dir():
        raise ConfigError(f"{option} {p}: folder {p.parent} does not exist")
    return p


def save_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write atomically (a .tmp file renamed into place); returns the file's size in bytes. Tensors are cloned, so
    tied weights (one storage under two keys, which safetensors refuses) are written twice instead of failing
    after the training that produced them."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path.stat().st_size


def resolve_device(name: str) -> torch.device:
    """torch.device for a config's `device` option; a clear ConfigError when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a torch device; use cpu, cuda or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device here; use device=cpu (or auto)")
    return dev


class _Tracer(fx.Tracer):
    """Treats every module of the given classes (and their subclasses: custom padded convs) as one leaf node."""

    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: tuple[type, ...] = ()) -> fx.GraphModule:
    """Symbolically trace `model` (modules of `leaves` stay leaves); UnsupportedModelError (with the reason) when
    torch.fx cannot."""
    try:
        graph = _Tracer(leaves).trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "cannot analyse this graph"
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {msg}); "
            "a traceable graph is needed to find producer/consumer pairs") from None
    return fx.GraphModule(model, graph)


def is_causal_lm(model: nn.Module) -> bool:
    """True when the model contains a *ForCausalLM module (its output is next-token logits)."""
    return any(type(m).__name__.endswith("ForCausalLM") for m in model.modules())


def find_tokenizer(model: nn.Module, path: str | None) -> Any:
    """The local tokenizer of `path`, else of the folder the HF model inside `model` was loaded from."""
    cands = [path] if path else [getattr(getattr(m, "config", None), "_name_or_path", None) for m in model.modules()]
    for c in cands:
        if c and Path(c).is_dir():
            from transformers import AutoTokenizer

            try:
                return AutoTokenizer.from_pretrained(str(c), local_files_only=True)
            except (OSError, ValueError):
                continue
    raise ConfigError("text data needs a tokenizer and none was found next to the model; pass --set "
                      "tokenizer=FOLDER (a local HF tokenizer) or give token ids as a .npy array")


def token_windows(model: nn.Module, texts: list[str], seq_len: int, tok_path: str | None) -> torch.Tensor:
    """All texts tokenized, joined with EOS and cut into (n, seq_len) windows (no padding anywhere)."""
    tok = find_tokenizer(model, tok_path)
    sep = [tok.eos_token_id] if tok.eos_token_id is not None else []
    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + sep
    n = len(ids) // seq_len
    if n == 0:
        raise ConfigError(f"the training text has {len(ids)} tokens, fewer than seq_len={seq_len}; add text or "
                          "lower seq_len")
    return torch.tensor(ids[:n * seq_len], dtype=torch.long).view(n, seq_len)


class Checkpoint:
    """A resumable training checkpoint (model + optimizer + step), tied to the configuration that wrote it.

    `key` is the JSON of the training options that must match for a resume (a checkpoint written under other options
    is refused, never silently mixed in). Writes are atomic (tmp file + rename). Loading uses weights_only=True:
    a checkpoint holds tensors and plain values only, so nothing in it can run code."""

    def __init__(self, path: str | Path | None, cfg: Any, exclude: set[str]):
        import json

        self.path = Path(path) if path else None
        self.key = json.dumps(cfg.model_dump(exclude=exclude), sort_keys=True)

    def resume(self, model: nn.Module, opt: torch.optim.Optimizer, dev: torch.device) -> int:
        """Load a matching checkpoint into model and optimizer; the step to start from (0 when there is none)."""
        if self.path is None or not self.path.is_file():
            return 0
        state = torch.load(self.path, map_location=dev, weights_only=True)
        if state.get("key") != self.key:
            raise ConfigError(f"checkpoint {self.path} was written under another configuration; remove it or change "
                              "path")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        return int(state["step"])

    def save(self, model: nn.Module, opt: torch.optim.Optimizer, step: int, every: int, last: int) -> None:
        """Write after `step` steps when step is a multiple of `every` or the last one."""
        if self.path is None or (step % every and step != last):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"key": self.key, "model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        tmp.replace(self.path)


def progress_bar(label: str, enabled: bool):
    """The methods' rich progress bar on stderr ("<label> <task>", bar, done/total, elapsed); drawn only when
    `enabled` (a method's `progress` option)."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(f"{label} {{task.description}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(file=sys.stderr), disable=not enabled, transient=False)
