"""Model plumbing for DEFT: find the MLP blocks (BERT-style encoders, Llama-style decoders), attach LoRA (peft) or a
bottleneck adapter, a task head for encoders, merge for export, ReLU-ify, and remove (skip) whole MLP blocks.

Skipping an MLP block replaces its output by a constant vector (its mean output on held-out data, `fill=mean`, or
zero): BERT's output becomes LayerNorm(x + c), Llama's residual adds c. Both are static graph changes, so the
exported ONNX graph loses the block's two (Llama: three) MatMuls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import MissingDependencyError, UnsupportedModelError


@dataclass
class Block:
    """One transformer layer's MLP: where its activation module sits and how to skip it."""

    family: str  # "bert" | "llama"
    layer: nn.Module  # BertLayer / LlamaDecoderLayer
    name: str  # qualified name of the layer inside the HF model

    @property
    def act_parent(self) -> nn.Module:
        return self.layer.intermediate if self.family == "bert" else self.layer.mlp

    @property
    def act_attr(self) -> str:
        return "intermediate_act_fn" if self.family == "bert" else "act_fn"

    @property
    def act(self) -> nn.Module:
        return getattr(self.act_parent, self.act_attr)

    @property
    def down(self) -> nn.Linear:
        return self.layer.output.dense if self.family == "bert" else self.layer.mlp.down_proj

    @property
    def skipped(self) -> bool:
        return isinstance(self.layer.intermediate if self.family == "bert" else self.layer.mlp, (NoMLP, ConstMLP))


def hf_core(model: nn.Module) -> tuple[nn.Module, nn.Module, str]:
    """(the transformers model inside `model`, its parent, the attribute holding it)."""
    try:
        from transformers import PreTrainedModel
    except ImportError as e:
        raise MissingDependencyError("transformers", "hf") from e
    if isinstance(model, PreTrainedModel):
        raise UnsupportedModelError("deft expects the model wrapped as edgekit loads it (an HF folder or a built-in)")
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, PreTrainedModel):
                return child, parent, attr
    raise UnsupportedModelError(f"deft needs a Hugging Face transformer (BERT-style encoder or Llama-style decoder); "
                                f"none found in {type(model).__name__}")


def find_blocks(hf: nn.Module) -> list[Block]:
    """Every MLP block, in layer order; UnsupportedModelError when the layout is neither BERT nor Llama."""
    blocks = []
    for name, m in hf.named_modules():
        if hasattr(m, "intermediate") and hasattr(m, "output") and hasattr(m.output, "dense") and \
                hasattr(m.intermediate, "intermediate_act_fn"):
            blocks.append(Block("bert", m, name))
        elif hasattr(m, "mlp") and all(hasattr(m.mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            blocks.append(Block("llama", m, name))
    if not blocks:
        raise UnsupportedModelError(f"deft found no MLP blocks in {type(hf).__name__}: it handles BERT-style "
                                    "(intermediate/output) and Llama-style (gate/up/down_proj) layers")
    if len({id(b.act) for b in blocks}) != len(blocks):  # one shared activation module would be hooked twice
        for b in blocks:
            setattr(b.act_parent, b.act_attr, type(b.act)())
    return blocks


DEFAULT_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}


def add_lora(hf: nn.Module, family: str, cfg: Any) -> nn.Module:
    """peft LoRA on the configured linears (default: attention Q and V, as the reference recipe); base frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise MissingDependencyError("peft", "hf") from e
    targets = cfg.lora_targets or DEFAULT_TARGETS[family]
    lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                    bias="none")
    try:
        return get_peft_model(hf, lc)
    except ValueError as e:
        raise UnsupportedModelError(f"lora_targets {targets}: {str(e).splitlines()[0]}") from None


class Adapter(nn.Module):
    """Pfeiffer-style bottleneck adapter on an MLP's output: y + up(relu(down(y))); up starts at zero (identity)."""

    def __init__(self, inner: nn.Linear, reduction: int):
        super().__init__()
        d = inner.out_features
        self.inner = inner
        self.adapter_down = nn.Linear(d, max(1, d // reduction))
        self.adapter_up = nn.Linear(max(1, d // reduction), d)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y + self.adapter_up(torch.relu(self.adapter_down(y)))


def add_adapters(blocks: list[Block], reduction: int) -> None:
    """Wrap every MLP down-projection in a bottleneck adapter (freezing is done by the caller)."""
    for b in blocks:
        parent = b.layer.output if b.family == "bert" else b.layer.mlp
        attr = "dense" if b.family == "bert" else "down_proj"
        setattr(parent, attr, Adapter(getattr(parent, attr), reduction))


def down_linear(b: Block) -> nn.Linear:
    """The base down-projection (inside an adapter if one wraps it)."""
    d = b.down
    return d.inner if isinstance(d, Adapter) else d


class Classifier(nn.Module):
    """Encoder + mean pooling over the mask + linear head. Returns (last hidden state, logits): output 0 keeps the
    source's contract (edgekit's fidelity compares it with the source), output 1 is the task."""

    def __init__(self, encoder: nn.Module, dim: int, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, classes)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the encoder's own output, its mean over the mask; an already pooled (B, D) output is kept)."""
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        h = h.last_hidden_state if hasattr(h, "last_hidden_state") else h
        if h.dim() == 2:
            return h, h
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return h, (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, pooled = self.pooled(input_ids, attention_mask)
        return h, self.head(pooled)


class NoMLP(nn.Module):
    """Stands in for a skipped BERT intermediate: no compute (its output is ignored by ConstOutput)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConstOutput(nn.Module):
    """A skipped BERT MLP's output: LayerNorm(input + c)."""

    def __init__(self, c: torch.Tensor, ln: nn.LayerNorm):
        super().__init__()
        self.register_buffer("c", c.detach().clone())
        self.LayerNorm = ln

    def forward(self, _h: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.c)


class ConstMLP(nn.Module):
    """A skipped Llama MLP: the constant c added to the residual, whatever the input."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.register_buffer("c", c.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) + self.c


class MeanOut:
    """Hook that accumulates the mean output of a module over real tokens."""

    def __init__(self, mod: nn.Module):
        self.sum, self.n, self.mask = None, 0, None
        self.h = mod.register_forward_hook(self._hook)

    def _hook(self, _m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        o = out.detach().double().reshape(-1, out.shape[-1])
        if self.mask is not None and self.mask.numel() == o.shape[0]:
            o = o[self.mask.reshape(-1).bool().to(o.device)]
        s = o.sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.n += o.shape[0]

    def mean(self) -> torch.Tensor:
        self.h.remove()
        return (self.sum / max(self.n, 1)).float()


def mlp_output_module(b: Block) -> nn.Module:
    """The module whose output is the MLP's contribution before the residual (BERT: output.dense; Llama: mlp)."""
    return b.layer.output.dense if b.family == "bert" else b.layer.mlp


def skip_block(b: Block, c: torch.Tensor) -> None:
    """Replace the block's MLP by the constant c (module doc)."""
    if b.family == "bert":
        b.layer.output = ConstOutput(c, b.layer.output.LayerNorm)
        b.layer.intermediate = NoMLP()
    else:
        b.layer.mlp = ConstMLP(c)


def relufy(blocks: list[Block]) -> list[str]:
    """Replace every MLP activation by ReLU (exact zeros); returns the activations replaced."""
    old = []
    for b in blocks:
        old.append(type(b.act).__name__)
        setattr(b.act_parent, b.act_attr, nn.ReLU())
    return old
