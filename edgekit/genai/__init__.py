"""LLMs on the edge: Llama-family decoders exported with a KV cache, validated against transformers' greedy
generate, and run token by token on ONNX Runtime / OpenVINO (their own generation stacks where installed, else a
numpy greedy loop).

Public API::

    edgekit.genai.generate(ART, prompt, max_new_tokens=32, runtime=None, target=None, threads=None, stack="auto")
        -> Generation (text, tokens, ttft_s, decode_tokens_per_s, peak_rss_mb, summary())
    edgekit.genai.write_decoder_artifact(module, out, runtimes, source, tok_dir, ...)   (edgekit export/compress
        --kv-cache call this)
    edgekit.genai.export_decoder(lm, path, codes=None)   the KV-cache ONNX graph alone
    edgekit.genai.int4_matmulnbits(ART_or_onnx, out_onnx, block_size=32)   4-bit weights as ORT MatMulNBits

Submodules: decoder (graph + wrapper), loop (numpy greedy loop), stacks (onnxruntime-genai, openvino-genai),
files (genai_config.json, stateful IR, tokenizer IRs), check (validation), build (artifact), run (generation).
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {"generate": ("edgekit.genai.run", "generate"), "Generation": ("edgekit.genai.run", "Generation"),
        "write_decoder_artifact": ("edgekit.genai.build", "write_decoder_artifact"),
        "tokenizer_dir": ("edgekit.genai.build", "tokenizer_dir"),
        "check_runtimes": ("edgekit.genai.build", "check_runtimes"),
        "export_decoder": ("edgekit.genai.decoder", "export_decoder"),
        "DecoderInfo": ("edgekit.genai.decoder", "DecoderInfo")}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        mod, attr = _API[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'edgekit.genai' has no attribute {name!r}")
