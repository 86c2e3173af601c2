"""A plain numpy greedy loop over the KV-cache decoder: the reference every generation stack is checked against, and
the fallback where a runtime's own generation package is missing. Needs only numpy and the runtime (no torch).

Two ways to hold the cache:
- `PastIO`: the ONNX graph's past_key_values.* inputs and present.* outputs (ONNX Runtime, or OpenVINO running the
  stateless graph); the step records (new tokens, past length) so tests can see that decode steps use the cache;
- `OVState`: OpenVINO's stateful IR (the cache lives in the infer request's variables; beam_idx selects rows).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError

# validated runtime settings: fp32 math, no on-the-fly activation quantization, fp32 KV cache (OpenVINO's CPU plugin
# otherwise stores the cache as u8, which moves logits)
OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0", "KV_CACHE_PRECISION": "f32"}


class PastIO:
    """Decoder with explicit past/present tensors; `run(feeds) -> [logits, *present]`."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], layers: int, kv_heads: int,
                 head_dim: int):
        self._run = run
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.calls: list[tuple[int, int]] = []  # (tokens fed, past length) per call
        self.reset()

    def reset(self) -> None:
        self.past = [np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for _ in range(2 * self.layers)]
        self.length = 0
        self.calls = []

    def step(self, ids: Sequence[int], every: bool = False) -> np.ndarray:
        """Feed `ids` after what the cache holds; return the last position's logits (vocab,), or every fed
        position's (len(ids), vocab) with `every` (perplexity)."""
        n = len(ids)
        feeds = {"input_ids": np.asarray([ids], np.int64),
                 "attention_mask": np.ones((1, self.length + n), np.int64),
                 "position_ids": np.arange(self.length, self.length + n, dtype=np.int64)[None]}
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"] = self.past[2 * i]
            feeds[f"past_key_values.{i}.value"] = self.past[2 * i + 1]
        out = self._run(feeds)
        self.calls.append((n, self.length))
        self.past = list(out[1:1 + 2 * self.layers])
        self.length += n
        if self.past[0].shape[2] != self.length:
            raise RuntimeError(f"the decoder returned a cache of {self.past[0].shape[2]} positions, expected "
                               f"{self.length}")
        return np.asarray(out[0])[0] if every else np.asarray(out[0])[0, -1]


class OVState:
    """OpenVINO stateful decoder (inputs input_ids, attention_mask, position_ids, beam_idx; output logits)."""

    def __init__(self, compiled: Any):
        self.req = compiled.create_infer_request()
        self.calls: list[tuple[int, int]] = []
        self.reset()

    def reset(self) -> None:
        self.req.reset_state()
        self.length = 0
        self.calls = []

    def step(self, ids: Sequence[int], every: bool = False) -> np.ndarray:
        n = len(ids)
        res = self.req.infer({"input_ids": np.asarray([ids], np.int64),
                              "attention_mask": np.ones((1, self.length + n), np.int64),
                              "position_ids": np.arange(self.length, self.length + n, dtype=np.int64)[None],
                              "beam_idx": np.zeros(1, np.int32)})
        self.calls.append((n, self.length))
        self.length += n
        return np.asarray(res[0])[0] if every else np.asarray(res[0])[0, -1]


def validated_config(validation: dict | None, runtime: str) -> dict[str, str]:
    """The runtime settings an export was validated with (its record's `runtime_config`; OpenVINO's validated
    defaults when none is recorded): what generate, profile and eval open the file with."""
    return dict((validation or {}).get("runtime_config") or (OV_CONFIG if runtime == "openvino" else {}))


def ort_runner(sess: Any, layers: int) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """`feeds -> [logits, present.0.key, present.0.value, ...]` for an ONNX Runtime session of a KV-cache decoder.
    A fused graph (genai.fused, onnxruntime-genai's builder layout) derives positions from the attention mask and
    lists all present keys before the values: only the inputs the graph has are fed, and the outputs are fetched by
    name in PastIO's order."""
    names = {i.name for i in sess.get_inputs()}
    outs = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    fetch = outs if set(outs) <= {o.name for o in sess.get_outputs()} else None
    return lambda feeds: sess.run(fetch, {k: v for k, v in feeds.items() if k in names})


def open_decoder(path: Path, runtime: str, info: dict, threads: int | None = None,
                 config: dict[str, str] | None = None) -> PastIO | OVState:
    """The decoder file in its runtime: ONNX (.onnx, past in/out) in ONNX Runtime or OpenVINO, or a stateful IR
    (.xml) in OpenVINO, with the settings the artifact was validated with (`config`)."""
    path = Path(path)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        for k, v in (config or {}).items():
            so.add_session_config_entry(k, str(v))
        if threads:
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return PastIO(ort_runner(sess, info["layers"]), info["layers"], info["kv_heads"], info["head_dim"])
    if runtime == "openvino":
        import openvino as ov

        cfg: dict[str, Any] = dict(config or OV_CONFIG)
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(path), "CPU", cfg)
        if any(p.get_any_name() == "beam_idx" for p in compiled.inputs):
            return OVState(compiled)
        req = compiled.create_infer_request()
        return PastIO(lambda feeds: [np.asarray(v) for v in req.infer(feeds).values()], info["layers"],
                      info["kv_heads"], info["head_dim"])
    raise ConfigError(f"no KV-cache generation for runtime '{runtime}'; use onnxruntime or openvino")


@dataclass
class Greedy:
    """Tokens of one greedy run and when each arrived (seconds from the start of the run)."""

    tokens: list[int]
    times: list[float]
    logits: list[np.ndarray] = field(default_factory=list)
    stopped_at_eos: bool = False


def greedy(dec: PastIO | OVState, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int] = (),
           keep_logits: bool = False, on_token: Callable[[int], None] | None = None) -> Greedy:
    """Prefill the prompt in one call, then one token per call; stop at an eos id (when `eos` is given)."""
    if not prompt:
        raise ConfigError("the prompt encodes to no tokens; pass a non-empty --prompt")
    dec.reset()
    t0 = time.perf_counter()
    out = Greedy([], [])
    feed = list(prompt)
    for _ in range(max_new_tokens):
        logits = dec.step(feed)
        if keep_logits:
            out.logits.append(np.array(logits, np.float32))
        tok = int(np.argmax(logits))
        out.tokens.append(tok)
        out.times.append(time.perf_counter() - t0)
        if on_token:
            on_token(tok)
        if tok in eos:
            out.stopped_at_eos = True
            break
        feed = [tok]
    return out
