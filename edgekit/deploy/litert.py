"""LiteRT deploy forms through ai-edge-quantizer, built on the litert-torch float .tflite of the compressed model.

Forms (each validated at task level against the float PyTorch model with check.fidelity, timed interleaved with
the FP32 .tflite by check.interleaved on LiteRT):
- "int8" (static, recipe static_wi8_ai8): int8 weights per channel, int8 activations per tensor, int8 output;
  full-integer (int8 input too) when the input range is known (--data, or `input_range`), else the ops from the
  input through the first layer stay float (below). XNNPACK runs its QS8 kernels.
- "int8_dynamic" (dynamic-range, recipe dynamic_wi8_afp32): int8 weights per channel, float activations that the
  kernels quantize per call (XNNPACK's QD8 kernels). For transformers, where one static range per tensor collapses.

Activation ranges of the static form, and why:
- With --data: ai-edge-quantizer's own MinMax calibration on those samples (the last 16 held out for validation
  when there are 32 or more, as for ONNX Runtime).
- Data-free (CNNs with BatchNorm): the quantizer's calibration result is a plain {tensor name: {"min", "max"}}
  dict that `quantize()` takes as is, so edgekit can set ranges itself. It calibrates on the seeded example
  inputs (so that every tensor has a min/max), then overrides every tensor it can identify with the interval that
  ranges.py derives from the BN statistics (running_mean ± k·std through BN's affine, ReLU/ReLU6, adds, pools,
  reshapes), i.e. the very ranges the ONNX Runtime/OpenVINO QDQ file gets. Identification is by value, not by name:
  the float ONNX that ranges.py works on and the float .tflite are run on the same seeded input, and a .tflite
  tensor takes the range of the ONNX tensor it equals (after NHWC -> NCHW where the shape needs it). Why by value:
  litert-torch fuses ReLU6 into the conv and renames tensors after module scopes joined by ';', while ranges.py
  works on ONNX tensor names; equal values are what "the same tensor" means. Layout and pooling ops (PAD, RESHAPE,
  TRANSPOSE, MEAN, pools) inherit their inputs' range (PAD adds its zero). Ops still without a trusted range (the
  classifier's FULLY_CONNECTED: no BN follows it) stay float and are listed in left_in_float, as the ORT/OpenVINO
  file keeps Gemm/MatMul outputs float. Why: the seeded inputs' range is no guide to real data; it clipped
  ResNet-20's logits to ±3.5 and two zero-pads of inner activations, and 14 points of Fashion accuracy went with them
  (0.786, against 0.926 for the ORT file with the same BN ranges; 0.9275 after the change). An interval-arithmetic
  bound of W x + b never clips but was too coarse: ResNet-20's logits then missed the 0.99 mean-cosine floor (0.985).
  With --data the calibrated file stays full-integer, output included. The input: BN says nothing
  about the app's preprocessing, so without `input_range` the ops from the input through the first conv stay float
  (as in the ORT/OpenVINO file); with it, the input and its layout copies take that range.
  (Seeded inputs alone, without the override, would calibrate a model on noise: random-normal images drive a CNN's
  activations far from what BN statistics say its data does.)
- The weight scales are the quantizer's (per-channel max|w|/127): its recipe API has no way to pass a per-channel
  scale in. Where the method recorded integer codes (edgekit.quant WeightCode), the file's int8 weights are compared
  with them channel by channel (up to a per-channel sign from a folded BN gamma) and the record says whether they are
  equal: they are when each channel's largest code is ±127 (8-bit symmetric grids), not for lower-bit grids,
  which the quantizer re-rounds onto 255 levels (the float values are the method's, so only the rounding differs).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, EdgekitError, ExportMismatchError, MissingDependencyError, UnsupportedModelError
from ..model_io import InputSpec, example_inputs
from ..quant import WeightCode
from . import check

FORMS = {"int8": "int8 full-integer static (ai-edge-quantizer static_wi8_ai8)",
         "int8_dynamic": "int8 dynamic-range (ai-edge-quantizer dynamic_wi8_afp32)"}
SEEDS = 8  # seeded example inputs the static recipe is calibrated on when there is no data (ranges then overridden)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from .._fd import captured_fds

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), captured_fds():
        warnings.simplefilter("ignore")
        yield


def _aeq():
    try:
        with _quiet():
            from ai_edge_quantizer import quantizer, recipe
    except ImportError as e:
        raise MissingDependencyError("ai-edge-quantizer", "tflite") from e
    return quantizer, recipe


def _interpreter(path: Path, keep: bool = False):
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=keep)
        it.allocate_tensors()
    return it


def _signature(path: Path) -> tuple[str, list[str]]:
    sigs = _interpreter(path).get_signature_list()
    key = next(iter(sigs))
    return key, list(sigs[key]["inputs"])


def op_names(path: Path) -> dict[str, int]:
    """Op histogram of a .tflite (for the record and tests)."""
    counts: dict[str, int] = {}
    for op in _interpreter(path)._get_ops_details():  # noqa: SLF001 - the op listing the Python API offers
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each dtype the file holds (int8 activations and weights show up here)."""
    out: dict[str, int] = {}
    for d in _interpreter(path).get_tensor_details():
        k = np.dtype(d["dtype"]).name
        out[k] = out.get(k, 0) + 1
    return out


_PASS = ("TRANSPOSE", "PAD", "PADV2", "RESHAPE")  # layout ops between the graph input and the first layer
_FIRST = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")


def input_chain(path: Path) -> list[tuple[str, str]]:
    """(op name, output tensor name) of the ops from the graph input up to and including the first layer(s)."""
    it = _interpreter(path)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    frontier = {int(d["index"]) for d in it.get_input_details()}
    out = []
    for op in it._get_ops_details():  # noqa: SLF001 - topological order
        if op["op_name"] == "DELEGATE" or not frontier & {int(i) for i in op["inputs"]}:
            continue
        out += [(op["op_name"], names[int(o)]) for o in op["outputs"]]
        if op["op_name"] in _PASS:
            frontier |= {int(o) for o in op["outputs"]}
    return out


def float_tflite(model: nn.Module, specs: Sequence[InputSpec], work: Path) -> Path:
    """The litert-torch float .tflite of the (compressed) model at work/float.tflite."""
    from ..export.tflite import convert

    path = work / "float.tflite"
    if not path.is_file():
        with _quiet():
            tmp = convert(model, example_inputs(list(specs)), work / "float_tfl")
        shutil.move(str(tmp), path)
        shutil.rmtree(work / "float_tfl", ignore_errors=True)
    return path


def _feeds(names: list[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, np.ndarray]]:
    return [{n: (t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)) for n, t in zip(names, r)} for r in rows]


def _onnx_values(float_onnx: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every float tensor of the float ONNX on one input (ONNX Runtime, all node outputs made graph outputs)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(float_onnx))
    have = {o.name for o in proto.graph.output}
    for n in proto.graph.node:
        for o in n.output:
            if o and o not in have:
                proto.graph.output.append(onnx.ValueInfoProto(name=o))
                have.add(o)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    vals = sess.run(names, {i.name: v for i, v in zip(sess.get_inputs(), feeds.values())})
    out = {n: np.asarray(v) for n, v in zip(names, vals) if np.asarray(v).dtype == np.float32}
    out.update({i.name: v for i, v in zip(sess.get_inputs(), feeds.values())})
    return out


def _layouts(a: np.ndarray) -> list[np.ndarray]:
    """The array and, for 4-d NHWC, its NCHW view (litert-torch keeps NHWC inside and transposes at the ends)."""
    return [a] + ([a.transpose(0, 3, 1, 2)] if a.ndim == 4 else [])


def match_tensors(float_tfl: Path, float_onnx: Path, feeds: dict[str, np.ndarray],
                  wanted: set[str]) -> dict[str, str]:
    """.tflite tensor name -> ONNX tensor name (one of `wanted`) that holds the same values on the same input."""
    onnx_vals = {n: v for n, v in _onnx_values(float_onnx, feeds).items() if n in wanted}
    by_size: dict[int, list[str]] = {}
    for n, v in onnx_vals.items():
        by_size.setdefault(v.size, []).append(n)
    it = _interpreter(float_tfl, keep=True)
    for d, x in zip(it.get_input_details(), feeds.values()):
        it.set_tensor(d["index"], np.ascontiguousarray(x, dtype=d["dtype"]))
    with _quiet():
        it.invoke()
    out: dict[str, str] = {}
    for d in it.get_tensor_details():
        if np.dtype(d["dtype"]) != np.float32:
            continue
        try:
            t = it.get_tensor(d["index"])
        except ValueError:  # weights/constants without a buffer in this interpreter
            continue
        cands = by_size.get(t.size, [])
        if not cands or t.size < 2:
            continue
        for view in _layouts(t):
            scale = float(np.abs(view).max()) or 1.0
            hit = next((n for n in cands if onnx_vals[n].shape == view.shape
                        and np.abs(onnx_vals[n] - view).max() <= 1e-3 * scale), None)
            if hit:
                out[d["name"]] = hit
                break
    return out


_INHERIT = _PASS + ("MEAN", "MAX_POOL_2D", "AVERAGE_POOL_2D", "SQUEEZE", "EXPAND_DIMS")  # range within the input's


def _keep_float(q: Any, tensor: str) -> None:
    """Recipe entry: the op writing `tensor` is not quantized (ai-edge-quantizer scopes are 'output names;')."""
    import re

    from ai_edge_quantizer import algorithm_manager, qtyping

    q.update_quantization_recipe(regex=f"^{re.escape(tensor)};$", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                 algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)


def _ops(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(op name, input tensor names, output tensor names) in topological order (delegates skipped)."""
    it = _interpreter(path)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    return [(op["op_name"], [names[int(i)] for i in op["inputs"] if int(i) in names],
             [names[int(o)] for o in op["outputs"] if int(o) in names])
            for op in it._get_ops_details() if op["op_name"] != "DELEGATE"]  # noqa: SLF001


def data_free_plan(model: nn.Module, specs: Sequence[InputSpec], float_tfl: Path, work: Path, k: float,
                   input_range: tuple[float, float] | None) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """(.tflite activation tensor -> BN-statistics range, op outputs with no trusted range).

    A tensor gets a range when it equals (by value) an ONNX tensor that ranges.py reaches from BN statistics, when
    it is the input or a layout copy of it and `input_range` is given, or when a layout/pooling op makes it from
    tensors that have one (its range is within theirs; PAD adds its zero). What is left (the logits after the last
    FULLY_CONNECTED, typically) has only the seeded inputs' range, which says nothing about real data: the caller
    keeps those ops in float, as the ORT file keeps Gemm/MatMul outputs float."""
    from . import int8

    float_onnx = work / "float.onnx"
    bn_map = int8.export_float(model, specs, float_onnx)
    rng = int8.data_free_ranges(model, float_onnx, bn_map, k, input_range)
    names = [s.name for s in specs]
    feeds = _feeds(names, [example_inputs(list(specs), seed=0)])[0]
    matched = match_tensors(float_tfl, float_onnx, feeds, set(rng))
    out = {t: rng[o] for t, o in matched.items()}
    it = _interpreter(float_tfl)
    graph_in = [d["name"] for d in it.get_input_details()]
    chain = input_chain(float_tfl)
    if input_range is not None:  # the input and its layout copies (NHWC, zero-padded) take the stated range
        lo_hi = (min(float(input_range[0]), 0.0), max(float(input_range[1]), 0.0))
        out.update({t: lo_hi for t in graph_in + [t for op, t in chain if op in _PASS]})
    first = set(graph_in) | {t for _, t in chain}  # without input_range these stay float anyway (build)
    act, consts = set(), set()
    for d in it.get_tensor_details():
        if np.dtype(d["dtype"]) == np.float32:
            act.add(d["name"])
            try:
                it.get_tensor(d["index"])
                consts.add(d["name"])
            except ValueError:  # an activation: no buffer before invoke
                pass
    untrusted = []
    for op, ins, outs in _ops(float_tfl):
        live = [i for i in ins if i in act and i not in consts]  # activation inputs
        for o in outs:
            if o in out or o not in act or (input_range is None and o in first):
                continue
            src = [out[i] for i in live if i in out]
            if op in _INHERIT and live and len(src) == len(live):
                lo, hi = min(r[0] for r in src), max(r[1] for r in src)
                out[o] = (min(lo, 0.0), max(hi, 0.0)) if op.startswith("PAD") else (lo, hi)
            else:
                untrusted.append(o)
    return out, untrusted


def data_free_qsvs(calibrated: dict[str, Any], ranges: dict[str, tuple[float, float]]) -> tuple[dict, int]:
    """The calibration result with every tensor of `ranges` set to its range; returns (qsv, tensors set)."""
    qsv = {n: dict(v) for n, v in calibrated.items()}
    done = 0
    for tname, (lo, hi) in ranges.items():
        if tname in qsv:
            shape = np.shape(qsv[tname].get("min", np.zeros(())))
            qsv[tname]["min"] = np.full(shape, lo, np.float32)
            qsv[tname]["max"] = np.full(shape, hi, np.float32)
            done += 1
    return qsv, done


def build(model: nn.Module, specs: Sequence[InputSpec], float_tfl: Path, work: Path, form: str,
          calibration: Sequence[Sequence[Any]] | None = None, k: float = 6.0,
          input_range: tuple[float, float] | None = None) -> tuple[Path, dict[str, Any]]:
    """Write work/<form>.tflite from the float .tflite; returns its path and build record."""
    quantizer, recipe = _aeq()
    out = work / f"{form}.tflite"
    q = quantizer.Quantizer(str(float_tfl))
    rec: dict[str, Any] = {"form": form, "description": FORMS[form]}
    if form == "int8_dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        with _quiet():
            q.quantize().export_model(str(out), overwrite=True)
        rec.update(weights="int8 per channel (symmetric)", activations="float; quantized per call by the kernels",
                   calibration={"method": "none (dynamic-range)"})
        return out, rec
    if form != "int8":
        raise ConfigError(f"unknown LiteRT deploy form '{form}'; choose one of {', '.join(FORMS)}")
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    float_ops: list[str] = []
    if not calibration and input_range is None:
        # data-free with no known input range (BN says nothing about the app's preprocessing): the ops from the
        # input through the first layer stay float, as the first conv does in the ORT/OpenVINO file. Measured on
        # EfficientNet-Lite0 (UDFC 8-bit, 48 Fashion-MNIST images, features' cosine to the float model): the
        # input quantized on the seeded inputs' range (about ±4.5, images span ±1) 0.930 mean / 0.850 worst; on
        # ±1: 0.988 / 0.973.
        graph_in = [("INPUT", d["name"]) for d in _interpreter(float_tfl).get_input_details()]
        for op, t in graph_in + input_chain(float_tfl):
            _keep_float(q, t)
            if op != "INPUT":
                float_ops.append(op)
    plan: tuple[dict[str, tuple[float, float]], list[str]] | None = None
    untrusted_ops: list[str] = []
    if not calibration:
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise UnsupportedModelError(f"data-free LiteRT INT8 needs BatchNorm layers and {type(model).__name__} "
                                        "has none; pass calibration data (--data FILE.npy)")
        plan = data_free_plan(model, specs, float_tfl, work, k, input_range)
        op_of = {o: op for op, _, outs in _ops(float_tfl) for o in outs}
        for t in plan[1]:  # no trusted range: the op stays float (data_free_plan)
            _keep_float(q, t)
            untrusted_ops.append(op_of[t])
    sig, names = _signature(float_tfl)
    rows = calibration if calibration else [example_inputs(list(specs), seed=s) for s in range(SEEDS)]
    with _quiet():
        cal = q.calibrate({sig: _feeds(names, rows)}, num_threads=2)
    if plan is None:
        qsv, crec = cal, {"method": "minmax (ai-edge-quantizer calibration)", "samples": len(calibration)}
    else:
        qsv, done = data_free_qsvs(cal, plan[0])
        crec = {"method": "data-free (BatchNorm statistics)", "k": k, "tensors_from_bn_ranges": done,
                "kept_float_no_trusted_range": plan[1], "seeded_inputs": SEEDS,
                "input_range": list(input_range) if input_range else "unknown: the ops reading the input stay float",
                "how": "each tensor identified (by value) with an ONNX tensor of ranges.py gets that BN-statistics "
                       "range, layout/pooling ops inherit their inputs' range, ops left without one stay float"}
    qsv = adjust_ranges(qsv)
    with _quiet():
        q.quantize(qsv).export_model(str(out), overwrite=True)
    outputs = {d["name"] for d in _interpreter(float_tfl).get_output_details()}
    out_float = plan is not None and bool(outputs & set(plan[1]))
    rec.update(weights="int8 per channel (symmetric, quantizer's max|w|/127 scales)",
               activations="int8 per tensor (asymmetric), output " + ("float" if out_float else "int8") + ", input " + (
                   f"float (left float, input range unknown: {', '.join(float_ops)})" if float_ops else "int8")
               + (f"; left float, no trusted range: {', '.join(untrusted_ops)}" if untrusted_ops else ""),
               calibration=crec, left_in_float=float_ops + untrusted_ops)
    return out, rec


def adjust_ranges(qsv: dict[str, Any]) -> dict[str, Any]:
    """Hook between calibration and quantization (identity; tests replace it to break a range on purpose)."""
    return qsv


def check_codes(path: Path, codes: dict[str, WeightCode]) -> dict[str, Any]:
    """Do the .tflite's int8 weights equal the method's codes per channel (up to sign)? By value, any layout."""
    from . import codes as C

    if not codes:
        return {"checked": 0, "note": "the method recorded no integer codes"}
    it = _interpreter(path)
    weights = []
    for d in it.get_tensor_details():
        if np.dtype(d["dtype"]) != np.int8 or len(d["shape"]) < 2:
            continue
        try:
            weights.append((d["name"], np.asarray(it.get_tensor(d["index"])).astype(np.int64),
                            int(d["quantization_parameters"]["quantized_dimension"])))
        except ValueError:
            continue
    exact, differ, missing = [], {}, []
    n_ch = n_same = 0
    for name, code in codes.items():
        t = C._target(code).reshape(code.codes.shape)  # noqa: SLF001 - same package
        best = None
        for wname, a, qd in weights:
            if a.size != t.size:
                continue
            m = np.moveaxis(a, qd, 0)
            if m.shape[0] != t.shape[0]:
                continue
            rest = list(range(1, m.ndim))
            for perm in itertools.permutations(rest):
                v = m.transpose([0, *perm])
                if v.shape != t.shape:
                    continue
                same = C._same_channels(v, t.reshape(len(t), -1))  # noqa: SLF001
                if best is None or same.mean() > best[0].mean():
                    best = (same, int(np.abs(np.abs(v.reshape(len(v), -1)) - np.abs(t.reshape(len(t), -1))).max()))
        if best is None:
            missing.append(name)
            continue
        same, diff = best
        n_ch, n_same = n_ch + len(same), n_same + int(same.sum())
        if same.all():
            exact.append(name)
        else:
            differ[name] = {"channels_differ": int((~same).sum()), "of": len(same), "max_code_difference": diff}
    rec = {"checked": len(codes), "tensors_equal": len(exact), "channels": n_ch, "channels_equal": n_same,
           "all_exact": not differ and not missing, "exact_where_int8": not differ, "not_exact": differ,
           "not_found": missing}
    if missing:
        rec["not_found_note"] = "no int8 weight of that shape in the file: the layer was left in float"
    if differ:
        rec["note"] = ("ai-edge-quantizer sets each channel's scale to max|w|/127 (its recipes take no scale), so "
                       "codes whose channel maximum is not ±127 are re-rounded onto its grid")
    return rec


def _label_form(static_ok: bool, mode: str) -> list[str]:
    return (["int8"] if static_ok else ["int8_dynamic"]) if mode == "int8" else (
        ["int8", "int8_dynamic"] if static_ok else ["int8_dynamic"])


def static_possible(model: nn.Module, calibration: Any, float_tfl: Path) -> bool:
    """Static (full-integer) when BN statistics give data-free ranges, or with data for a graph without softmax
    (attention: one range per tensor collapses, see int8.choose_form); else dynamic-range."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return True
    return bool(calibration) and "SOFTMAX" not in op_names(float_tfl)


def deploy_entry(model: nn.Module, specs: Sequence[InputSpec], root: Path, entry: dict[str, Any], mode: str,
                 calib: list | None, codes: dict[str, WeightCode], work: Path, options: dict[str, Any]) -> None:
    """`--deploy int8|auto` for the artifact's LiteRT export (entry updated in place; see select.py)."""
    from ..export.validate import validate

    opts = dict(options)
    held = opts.pop("validation", None)
    floors, threads, runs = opts.pop("floors", None), opts.pop("threads", None) or 2, opts.pop("runs", 20)
    k, input_range = opts.pop("k", 6.0), opts.pop("input_range", None)
    opts.pop("calibrate", None)
    timings = opts.pop("timings", None)  # tests: a fake interleaved() result
    work = work / "tflite"
    work.mkdir(parents=True, exist_ok=True)
    dest = root / entry["file"]
    note: dict[str, Any] = {"requested": mode}
    try:
        ftfl = float_tflite(model, specs, work)
        forms = _label_form(static_possible(model, calib, ftfl), mode)
    except (EdgekitError, RuntimeError, ValueError) as e:
        if mode == "int8":
            raise UnsupportedModelError(f"LiteRT INT8 deploy failed: {str(e).splitlines()[0][:300]}") from e
        entry["deploy"] = {**note, "form": "default", "why": f"LiteRT float file could not be built: {e}"[:400]}
        return
    inputs = check.validation_inputs(specs, held or calib)
    built: dict[str, Path] = {}
    forms_rec: dict[str, Any] = {}
    for f in forms:
        try:
            path, rec = build(model, specs, ftfl, work, f, calib, k, input_range)
        except (EdgekitError, RuntimeError, ValueError, KeyError) as e:
            if mode == "int8":
                if isinstance(e, EdgekitError):
                    raise
                raise UnsupportedModelError(f"LiteRT {f} failed: {str(e).splitlines()[0][:300]}") from e
            forms_rec[f] = {"built": False, "why": str(e).splitlines()[0][:300]}
            continue
        rec["ops"] = op_names(path)
        rec["tensor_types"] = tensor_types(path)
        rec["weight_codes"] = check_codes(path, codes)
        val = check.fidelity(model, path, "tflite", inputs, floors, threads)
        val["inputs"] = ("held-out data" if held else "calibration data" if calib
                         else "example inputs (seeded random)")
        rec["validation"], rec["passed"] = val, val["passed"]
        forms_rec[f], built[f] = rec, path
    label = forms[0]
    if mode == "int8" and not forms_rec[label]["passed"]:
        val = forms_rec[label]["validation"]
        raise ExportMismatchError(f"tflite INT8 ({label}) failed validation: {'; '.join(val['failed'])}; no artifact "
                                  "was written (try --data FILE.npy for calibrated ranges, or --deploy auto)")
    try:
        fp32_val = validate(model, specs, ftfl, "tflite", "fp32")
    except ExportMismatchError as e:  # then FP32 is only the timing reference, never kept
        fp32_val = {"passed": False, "failed": [str(e)[:300]]}
    files: dict[str, Path] = {"fp32": ftfl}
    if mode == "auto" and entry.get("weight_storage", {}).get("weights", "float") != "float":
        files["default"] = dest  # integer weights (weight-only): a form of its own
    files.update(built)
    speed = timings or check.interleaved(files, "tflite", example_inputs(list(specs)), threads, runs=runs)
    note.update(forms=forms_rec, speed=speed)
    med = speed["median_ms"]
    if mode == "int8":
        pick, why = label, "requested (--deploy int8)"
        ratio = speed["ratio_to_fp32"][label]
        if ratio > 1:
            cause = ((speed.get("slower") or {}).get(label) or {}).get("summary")
            note["warning"] = (f"LiteRT {label} measured {ratio:.2f}x FP32's latency (slower) on this host"
                               + (f": {cause.split('; ', 1)[-1]}" if cause else ""))
    else:
        ok = {"fp32": fp32_val.get("passed", True) is not False, "default": True,
              **{f: forms_rec[f]["passed"] for f in built}}
        pick = min((f for f in med if ok.get(f)), key=lambda f: med[f])
        times = ", ".join(f"{f} {v:.3g} ms" for f, v in med.items())
        why = f"fastest validated form on this host ({times})"
        rejected = [f"{f} rejected: {'; '.join(forms_rec[f]['validation']['failed'])}" for f in built
                    if not forms_rec[f]["passed"]]
        unbuilt = [f"{f} not built: {r['why']}" for f, r in forms_rec.items() if not r.get("built", True)]
        if rejected or unbuilt:
            why += "; " + "; ".join(rejected + unbuilt)
    note.update(form=pick, why=why)
    if pick != "default":
        note["default_validation"] = entry["validation"]
        shutil.copy2(files[pick], dest)
        if pick == "fp32":
            entry.update(precision="fp32", validation=fp32_val)
        else:
            entry.update(precision="int8", validation=forms_rec[pick]["validation"])
            entry.pop("weight_storage", None)
    entry["deploy"] = note
