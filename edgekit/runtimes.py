"""Open an exported model file in its runtime with a thread count and device, behind one `Session.run` interface.

Used by export validation, evaluation and profiling alike, so every number comes from the same code path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, MissingDependencyError

RUNTIMES = ("onnxruntime", "openvino", "tflite")
_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "tflite"}


@dataclass
class Session:
    """A loaded model: `run(feeds)` maps input name -> array to the list of output arrays."""

    runtime: str
    device: str
    input_names: list[str]
    output_names: list[str]
    run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)


def runtime_for_file(path: Path) -> str:
    """The runtime that executes a file, from its suffix."""
    rt = _SUFFIX.get(Path(path).suffix)
    if rt is None:
        raise ConfigError(f"{path}: unknown model file type; expected one of {', '.join(_SUFFIX)}")
    return rt


def open_session(path: Path, runtime: str | None = None, threads: int | None = None, device: str = "CPU",
                 fallback: str | None = None, profiling: bool = False, ov_dynamic_quant: bool = False,
                 spin_stop: bool = False, optimized_path: Path | None = None) -> Session:
    """Load `path` in `runtime` (default: from the suffix). `device` falls back to `fallback` when absent.

    `spin_stop` (ONNX Runtime only): the session's intra-op threads stop spinning when a run ends
    (`session.force_spinning_stop`). Timing loops that keep several sessions open in one process need it: by
    default each session's idle threads spin on after its run and take the cores from the next session's run
    (measured on this 2-core host: EfficientNet-Lite0 FP32 at 15.6 ms interleaved with its INT8 file, 6.6 ms
    alone; with spinning stopped 7.3 ms), which inflated and scrambled every interleaved ONNX Runtime ratio.

    OpenVINO's CPU plugin quantizes activations on the fly for layers with integer weights unless told not to;
    that changes results by ~1% (measured on the demo CNN), so it is off unless `ov_dynamic_quant` is set.
    """
    runtime = runtime or runtime_for_file(path)
    if runtime == "onnxruntime":
        return _ort(Path(path), threads, profiling, spin_stop, optimized_path)
    if runtime == "openvino":
        return _ov(Path(path), threads, device, fallback, profiling, ov_dynamic_quant)
    if runtime == "tflite":
        return _tflite(Path(path), threads)
    raise ConfigError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")


OV_DQ_GROUP = 32  # OpenVINO CPU's dynamic activation quantization group size when an artifact asks for it


def ov_dynamic_quant(entry: dict[str, Any] | None) -> bool:
    """Whether an artifact's export entry was validated with OpenVINO's dynamic activation quantization on (its
    recorded runtime_config sets DYNAMIC_QUANTIZATION_GROUP_SIZE to a non-zero group); every reader of the
    artifact opens the file the same way, so what is timed and scored is what was validated."""
    cfg = ((entry or {}).get("validation") or {}).get("runtime_config") or {}
    return str(cfg.get("DYNAMIC_QUANTIZATION_GROUP_SIZE", "0")) not in ("0", "")


OV_PRECISION_KEY = ["runtime_options", "INFERENCE_PRECISION_HINT"]


def ir_precision_hint(model: Any) -> str | None:
    """The inference precision an OpenVINO IR asks for in its rt_info (runtime_options), else None."""
    if model.has_rt_info(OV_PRECISION_KEY):
        return str(model.get_rt_info(OV_PRECISION_KEY).astype(str))
    return None


def ov_bf16_capable() -> bool:
    """Whether this host's OpenVINO CPU plugin computes in bf16 natively (AMX / AVX-512 BF16)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def graph_ops(path: Path) -> set[str]:
    """The op types of an ONNX file's main graph."""
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def weight_only_qdq(path: Path, ops: set[str] | None = None) -> bool:
    """True when the graph dequantizes integer weights but quantizes no activations (no QuantizeLinear)."""
    ops = graph_ops(path) if ops is None else ops
    return "DequantizeLinear" in ops and "QuantizeLinear" not in ops


def _ort(path: Path, threads: int | None, profiling: bool, spin_stop: bool = False,
         optimized_path: Path | None = None) -> Session:
    import onnxruntime as ort

    so = ort.SessionOptions()
    extra: dict[str, str] = {}
    ops = graph_ops(path)
    if weight_only_qdq(path, ops):
        # ORT keeps DequantizeLinear nodes unfolded (waiting for QDQ fusion) and re-runs them on every call, which
        # made int8-weight models up to 1.8x slower than fp32; with no activation QDQ there is nothing to fuse,
        # so fold them once at load (same numbers, measured equal to fp32 speed on the demo CNN).
        extra["session.disable_quant_qdq"] = "1"
    if spin_stop:
        extra["session.force_spinning_stop"] = "1"
    if "LayerNormalization" in ops:
        # ORT 1.32's SkipLayerNormalization CPU kernel (what its SkipLayerNormFusion makes of Add + LayerNormalization)
        # ran slower than the two ops it replaces at every shape tried on this host (1.4-6x at 2 threads, 2.5-9x at
        # 1; 1x128x384: 110 vs 31 us per op at 2 threads), 1.2-1.5 ms of MiniLM's 6.5 ms INT8 run; the RMSNorm variant
        # showed no such gap. Recorded in the manifest's runtime_config like every session setting, so an app opens
        # the file the same way.
        extra["optimization.disable_specified_optimizers"] = "SkipLayerNormFusion"
    for k, v in extra.items():
        so.add_session_config_entry(k, v)
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.enable_profiling = profiling
    if optimized_path is not None:  # the graph this session runs, after ORT's fusions (per-op attribution)
        so.optimized_model_filepath = str(optimized_path)
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    return Session("onnxruntime", "CPU", ins, outs, lambda feeds: sess.run(None, feeds),
                   {"session": sess, "config": extra})


def _ov(path: Path, threads: int | None, device: str, fallback: str | None, profiling: bool,
        dynamic_quant: bool) -> Session:
    import openvino as ov

    core = ov.Core()
    used = device
    if device not in core.available_devices:
        if not fallback:
            raise ConfigError(f"OpenVINO device {device} is not present (have {core.available_devices}); "
                              "declare a fallback in the target profile or pick another target")
        used = fallback
    cfg: dict[str, Any] = {}
    model = core.read_model(str(path))
    if threads and used == "CPU":
        cfg["INFERENCE_NUM_THREADS"] = threads
    if used == "CPU":
        # no silent bf16/fp16 on hosts that support it: f32 unless the file itself asks for another precision (the
        # bf16 form of --deploy auto records it in the IR's rt_info runtime_options, which OpenVINO also reads)
        cfg["INFERENCE_PRECISION_HINT"] = ir_precision_hint(model) or "f32"
        cfg["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = OV_DQ_GROUP if dynamic_quant else 0
    if profiling:
        cfg["PERF_COUNT"] = True
    compiled = core.compile_model(model, used, cfg)
    req = compiled.create_infer_request()
    ins = [p.get_any_name() for p in compiled.inputs]
    outs = [p.get_any_name() for p in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = req.infer(feeds)
        return [np.asarray(res[o]) for o in compiled.outputs]

    return Session("openvino", used, ins, outs, run,
                   {"compiled": compiled, "request": req, "requested_device": device, "fallback_used": used != device,
                    "config": {k: str(v) for k, v in cfg.items()}})


def _to_tflite_input(x: np.ndarray, d: dict[str, Any]) -> np.ndarray:
    """A feed in the input's dtype; float data for a quantized integer input (a fully integer LiteRT file, e.g.
    ai-edge-quantizer's static recipe) is quantized with the input's own scale and zero point."""
    dt = np.dtype(d["dtype"])
    scale, zero = d.get("quantization", (0.0, 0))
    if np.issubdtype(x.dtype, np.floating) and np.issubdtype(dt, np.integer) and scale:
        info = np.iinfo(dt)
        return np.ascontiguousarray(np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dt))
    return np.ascontiguousarray(x, dtype=dt)


def _from_tflite_output(y: np.ndarray, d: dict[str, Any]) -> np.ndarray:
    """An output as the model's real values: quantized integer outputs are dequantized to float32."""
    scale, zero = d.get("quantization", (0.0, 0))
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero) * np.float32(scale)
    return y.copy()


def _tflite(path: Path, threads: int | None) -> Session:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:  # pragma: no cover - core dependency
        raise MissingDependencyError("ai-edge-litert", "tflite") from e
    from ._fd import captured_fds

    with captured_fds():  # "Created TensorFlow Lite XNNPACK delegate" goes to fd 2
        interp = Interpreter(model_path=str(path), num_threads=threads or None)
        interp.allocate_tensors()
    ind = interp.get_input_details()
    outd = interp.get_output_details()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        vals = list(feeds.values())
        for i, d in enumerate(ind):
            x = np.asarray(feeds.get(d["name"], vals[i] if i < len(vals) else None))
            interp.set_tensor(d["index"], _to_tflite_input(x, d))
        interp.invoke()
        return [_from_tflite_output(interp.get_tensor(d["index"]), d) for d in outd]

    return Session("tflite", "CPU", [d["name"] for d in ind], [d["name"] for d in outd], run, {"interpreter": interp})


def session_inputs(sess: Session) -> list[dict[str, Any]]:
    """Input name, shape (None for dynamic dims) and numpy dtype as the runtime sees them, for random feeds."""
    if sess.runtime == "onnxruntime":
        out = []
        for i in sess.info["session"].get_inputs():
            onnx_t = i.type.removeprefix("tensor(").removesuffix(")")
            np_dt = np.dtype("float32") if onnx_t == "float" else np.dtype({"double": "float64"}.get(onnx_t, onnx_t))
            shape = [d if isinstance(d, int) else None for d in i.shape]
            out.append({"name": i.name, "shape": shape, "dtype": np_dt.name})
        return out
    if sess.runtime == "openvino":
        out = []
        for p in sess.info["compiled"].inputs:
            ps = p.get_partial_shape()
            shape = [d.get_length() if d.is_static else None for d in ps]
            dtype = np.dtype(p.get_element_type().to_dtype()).name
            out.append({"name": p.get_any_name(), "shape": shape, "dtype": dtype})
        return out
    det = sess.info["interpreter"].get_input_details()
    return [{"name": d["name"], "shape": [int(x) if x > 0 else None for x in d.get("shape_signature", d["shape"])],
             "dtype": np.dtype(d["dtype"]).name,
             # a quantized integer input (full-integer LiteRT file) takes real values: the session quantizes them
             "quantized": bool(d.get("quantization", (0.0, 0))[0]) and np.dtype(d["dtype"]).kind in "iu"}
            for d in det]


def random_feeds(specs: list[dict[str, Any]], hint: list[dict[str, Any]] | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for `specs`; dynamic dims come from `hint` (manifest inputs, by position) or 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for k, s in enumerate(specs):
        h = hint[k]["shape"] if hint and k < len(hint) else []
        shape = [d if d else (h[j] if j < len(h) and isinstance(h[j], int) and h[j] > 0 else 1)
                 for j, d in enumerate(s["shape"])]
        dt = np.dtype(s["dtype"])
        if dt.kind == "f":
            feeds[s["name"]] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            feeds[s["name"]] = np.ones(shape, dtype=dt)
        else:
            feeds[s["name"]] = rng.integers(0, 100, size=shape).astype(dt)
    return feeds
