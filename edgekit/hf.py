"""Hugging Face folders (config.json + safetensors), loaded local-only and never with remote code."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .errors import MissingDependencyError, ModelLoadError


class LogitsOnly(nn.Module):
    """Wrap an HF model so forward returns one tensor (logits or last hidden state), which exporters need."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False) \
            if "CausalLM" in type(self.model).__name__ else self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def load_hf_folder(path: Path, seq_len: int = 128):
    """Load with local_files_only=True, trust_remote_code=False; input spec = input_ids + attention_mask (1 x seq)."""
    from .specs import InputSpec, LoadedModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError("transformers", "hf") from e
    try:
        cfg = json.loads((Path(path) / "config.json").read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelLoadError(f"{path}/config.json is not valid JSON ({type(e).__name__}); fix or re-download the "
                             "config") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path}/config.json is not a JSON object; fix or re-download the config")
    if cfg.get("auto_map"):
        raise ModelLoadError(f"{path} needs remote code (auto_map in config.json), which edgekit never runs; "
                             "use a model whose architecture ships with transformers")
    if not any(Path(path).glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no .safetensors weights; convert the checkpoint to safetensors first")
    archs = cfg.get("architectures") or []
    cls = transformers.AutoModelForCausalLM if any(a.endswith("ForCausalLM") for a in archs) else transformers.AutoModel
    try:
        model = cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                    dtype=torch.float32, use_safetensors=True)
    except Exception as e:
        raise ModelLoadError(f"{path} could not be loaded by transformers ({str(e).splitlines()[0]})") from None
    vocab = cfg.get("vocab_size", 1000)
    if not isinstance(vocab, int) or not 0 < vocab < (1 << 31):
        raise ModelLoadError(f"{path}/config.json: vocab_size {vocab!r} is not a positive integer")
    specs = [InputSpec("input_ids", [1, seq_len], "int64", high=vocab),
             InputSpec("attention_mask", [1, seq_len], "int64")]
    return LoadedModel(LogitsOnly(model).eval(), str(path), "huggingface", specs)
