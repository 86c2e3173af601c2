"""A Llama-family causal LM as one ONNX decoder with a KV cache: past key/values in, present key/values out.

One graph serves prefill and decode. Inputs: input_ids (batch, seq), attention_mask (batch, past + seq),
position_ids (batch, seq), past_key_values.{i}.key/value (batch, kv_heads, past, head_dim) with a dynamic past
length (0 at prefill); outputs: logits (batch, seq, vocab), present.{i}.key/value (batch, kv_heads, past + seq,
head_dim). These are the names onnxruntime-genai and optimum use, so its genai_config.json maps them one to one.

The wrapper hands the flat past tensors to the HF model as a transformers DynamicCache and returns the cache's layers
as flat tensors, so torch.export (dynamo) sees only tensors. Exported with torch.onnx (opset 21), slimmed with
onnxslim, then recorded weight codes become integer weights + DequantizeLinear (export.qdq), as for every model.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..quant.codes import WeightCode

SEQ_DIM, PAST_DIM, TOTAL_DIM = "sequence_length", "past_sequence_length", "total_sequence_length"


@dataclass
class DecoderInfo:
    """What an app needs to drive the decoder graph (recorded in the manifest as `decoder`)."""

    model_type: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    context_length: int
    bos_token_id: int | None
    eos_token_ids: list[int]

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{k}" for i in range(self.layers) for k in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{k}" for i in range(self.layers) for k in ("key", "value")]

    def to_dict(self) -> dict:
        return {**asdict(self), "inputs": ["input_ids", "attention_mask", "position_ids", *self.past_names],
                "outputs": ["logits", *self.present_names],
                "past_shape": ["batch", "kv_heads", PAST_DIM, "head_dim"], "dtype": "float32"}

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderInfo":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def find_causal_lm(module: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM inside edgekit's wrappers (CausalLMLogits, LogitsOnly), or a clear error."""
    for m in module.modules():
        if type(m).__name__.endswith("ForCausalLM") and hasattr(m, "config") and hasattr(m, "generate"):
            return m
    raise UnsupportedModelError(f"--kv-cache needs a Hugging Face causal LM (a *ForCausalLM, e.g. smollm2 or a local "
                                f"Llama folder); {type(module).__name__} is not one")


def decoder_info(lm: nn.Module) -> DecoderInfo:
    """Shapes of the cache from the HF config; refuse what the flat past/present layout cannot express."""
    cfg = lm.config.get_text_config(decoder=True) if hasattr(lm.config, "get_text_config") else lm.config
    need = ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")
    if any(getattr(cfg, k, None) is None for k in need):
        raise UnsupportedModelError(f"{type(lm).__name__}: its config lacks one of {', '.join(need)}; only "
                                    "Llama-family decoders are supported with --kv-cache")
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        raise UnsupportedModelError(f"{type(lm).__name__} has sliding-window or hybrid layers; only full-attention "
                                    "Llama-family decoders are supported with --kv-cache")
    heads = int(cfg.num_attention_heads)
    eos = getattr(cfg, "eos_token_id", None)
    gen = getattr(lm, "generation_config", None)
    eos = eos if eos is not None else getattr(gen, "eos_token_id", None)
    return DecoderInfo(model_type=str(cfg.model_type), layers=int(cfg.num_hidden_layers), heads=heads,
                       kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
                       head_dim=int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
                       hidden=int(cfg.hidden_size), vocab=int(cfg.vocab_size),
                       context_length=int(getattr(cfg, "max_position_embeddings", 2048) or 2048),
                       bos_token_id=getattr(cfg, "bos_token_id", None),
                       eos_token_ids=[int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None])


class KVDecoder(nn.Module):
    """forward(input_ids, attention_mask, position_ids, past: list of 2*layers tensors) -> (logits, *present)."""

    def __init__(self, lm: nn.Module, layers: int):
        super().__init__()
        self.lm, self.layers = lm, layers
        params = inspect.signature(lm.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=True, **{self._cache_kw: cache})
        new = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        present = []
        for layer in new.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def example_inputs(info: DecoderInfo, batch: int = 2, seq: int = 4, past: int = 3) -> tuple:
    """An example with every dynamic size > 1 and distinct (torch.export specializes sizes 0 and 1, and equal sizes
    would be unified), so batch, sequence and past length stay symbolic on the first try."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, info.vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, seq).contiguous()
    kv = [torch.randn(batch, info.kv_heads, past, info.head_dim, generator=g) for _ in range(2 * info.layers)]
    return ids, mask, pos, kv


def _dynamic_shapes(info: DecoderInfo) -> tuple:
    batch = torch.export.Dim("batch", max=256)
    seq = torch.export.Dim("seq", max=info.context_length)
    past = torch.export.Dim("past", max=info.context_length)
    return ({0: batch, 1: seq}, {0: batch, 1: torch.export.Dim.AUTO}, {0: batch, 1: seq},
            [{0: batch, 2: past} for _ in range(2 * info.layers)])


def _rename_dims(proto: onnx.ModelProto, info: DecoderInfo) -> None:
    """Readable symbolic dims on the graph's inputs/outputs (the exporter writes s53, 'past + seq')."""
    g = proto.graph
    ren = {}
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        want = {"input_ids": {1: SEQ_DIM}, "position_ids": {1: SEQ_DIM}, "attention_mask": {1: TOTAL_DIM},
                "logits": {1: SEQ_DIM}}.get(vi.name, {})
        if vi.name.startswith("past_key_values."):
            want = {2: PAST_DIM}
        elif vi.name.startswith("present."):
            want = {2: TOTAL_DIM}
        for ax, new in {0: "batch", **want}.items():
            if ax < len(dims) and dims[ax].dim_param:
                ren.setdefault(dims[ax].dim_param, new)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in ren:
                d.dim_param = ren[d.dim_param]


def export_decoder(lm: nn.Module, path: Path, codes: dict[str, WeightCode] | None = None) -> dict:
    """Export `lm` as the KV-cache decoder graph to `path` (slimmed; integer weights from `codes`); returns
    {"info": DecoderInfo, "integer_weights": qdq report}."""
    from ..export.onnx import OPSET, _quiet, save_onnx, slim
    from ..export.qdq import apply_codes

    info = decoder_info(lm)
    wrapper = KVDecoder(lm, info.layers).eval()
    args = example_inputs(info)
    names = ["input_ids", "attention_mask", "position_ids", *info.past_names]
    try:
        with _quiet(), torch.no_grad():
            prog = torch.onnx.export(wrapper, args, dynamo=True, opset_version=OPSET, external_data=False,
                                     input_names=names, output_names=["logits", *info.present_names],
                                     dynamic_shapes=_dynamic_shapes(info), verbose=False, report=False)
    except Exception as e:
        raise UnsupportedModelError(f"torch.onnx export of the KV-cache decoder failed: "
                                    f"{str(e).strip().splitlines()[0][:300]} (run with --verbose for the trace)") from e
    proto = slim(prog.model_proto)
    _rename_dims(proto, info)
    report: dict = {}
    if codes:
        proto, report = apply_codes(proto, codes)
    save_onnx(proto, Path(path))
    return {"info": info, "integer_weights": report}
