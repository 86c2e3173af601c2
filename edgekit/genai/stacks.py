"""The runtimes' own generation stacks over an artifact's exports: onnxruntime-genai (exports/onnxruntime/, with
genai_config.json) and openvino-genai's LLMPipeline (exports/openvino/, stateful IR + tokenizer IRs).

Both take token ids (the prompt is encoded once, by the caller, with the artifact's tokenizer.json) and return the
new token ids with their arrival times, so that every stack is timed and compared the same way.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .files import need
from .loop import OV_CONFIG, Greedy


def ort_model(folder: Path, threads: int | None = None):
    """onnxruntime-genai's Model for an export folder (genai_config.json), with a thread count."""
    og = need("onnxruntime_genai", "onnxruntime-genai")
    cfg = og.Config(str(folder))
    if threads:
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                          "inter_op_num_threads": 1}}}}))
    return og.Model(cfg)


def ort_genai(folder: Path, prompt: Sequence[int], max_new_tokens: int, threads: int | None = None,
              ignore_eos: bool = False, model=None) -> Greedy:
    """Greedy generation with onnxruntime-genai (og.Generator, token by token). `ignore_eos` keeps going past an
    eos id by forbidding stops before max length (onnxruntime-genai's min_length)."""
    og = need("onnxruntime_genai", "onnxruntime-genai")
    model = model or ort_model(folder, threads)
    total = len(prompt) + max_new_tokens
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=total, min_length=total if ignore_eos else 0)
    t0 = time.perf_counter()
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(prompt, np.int32))
    out = Greedy([], [])
    while not gen.is_done() and len(out.tokens) < max_new_tokens:
        gen.generate_next_token()
        out.tokens.append(int(gen.get_next_tokens()[0]))
        out.times.append(time.perf_counter() - t0)
    return out


def ov_pipeline(folder: Path, threads: int | None = None, config: dict[str, str] | None = None):
    """openvino-genai's LLMPipeline on CPU with the settings the export was validated with (`config`, its record's
    runtime_config; default the weights-only settings: fp32 math and KV cache, no dynamic activation quantization).
    An int8-activation export (`--deploy int8`) records DYNAMIC_QUANTIZATION_GROUP_SIZE=32: opened with the
    weights-only settings, the pipeline would run another computation than the one validated."""
    ovg = need("openvino_genai", "openvino-genai")
    need("openvino_tokenizers", "openvino-tokenizers")  # registers the tokenizer IRs' custom ops
    props = dict(config or OV_CONFIG)
    if threads:
        props["INFERENCE_NUM_THREADS"] = threads
    return ovg.LLMPipeline(str(folder), "CPU", ATTENTION_BACKEND="SDPA", **props)


def ov_genai(folder: Path, prompt: Sequence[int], max_new_tokens: int, threads: int | None = None,
             ignore_eos: bool = False, pipe=None, config: dict[str, str] | None = None) -> Greedy:
    """Greedy generation with openvino-genai's LLMPipeline; token times come from a streamer callback."""
    ovg = need("openvino_genai", "openvino-genai")
    import openvino as ov

    pipe = pipe or ov_pipeline(folder, threads, config)
    cfg = pipe.get_generation_config()
    cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = max_new_tokens, False, ignore_eos
    cfg.num_beams = 1
    ids = np.asarray([list(prompt)], np.int64)
    inputs = ovg.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
    out = Greedy([], [])
    t0 = time.perf_counter()

    class _Times(ovg.StreamerBase):
        def write(self, token):  # one call per generated token (a list of ids in recent versions)
            for _ in (token if isinstance(token, (list, tuple)) else [token]):
                out.times.append(time.perf_counter() - t0)
            return ovg.StreamingStatus.RUNNING

        def end(self):
            return None

    res = pipe.generate(inputs, cfg, _Times())
    out.tokens = [int(t) for t in res.tokens[0]]
    if len(out.times) != len(out.tokens):  # a streamer that batched its calls: spread the measured end time
        end = time.perf_counter() - t0
        out.times = list(np.linspace(out.times[0] if out.times else end, end, len(out.tokens)))
    return out
