"""The verbs as plain functions (no printing): compress, export, load_model. The CLI is a thin layer over these."""
from __future__ import annotations

import copy
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import artifact as art
from .errors import ConfigError
from .export import onnx as onnx_export
from .export.validate import validate
from .methods import get_method, parse_config
from .methods import needs as method_needs
from .model_io import (InputSpec, LoadedModel, SourceOptions, example_inputs, load_model, mark_dynamic,
                       parse_input_shape)
from .quant import get_codes, loosest

Step = Callable[[str], None]
RUNTIMES = ("onnxruntime", "openvino", "tflite")


def _noop(_: str) -> None:
    return None


def resolve_specs(loaded: LoadedModel, input_shape: str | None, dynamic: list[str] | None = None) -> list[InputSpec]:
    """Input specs from --input-shape, else from the model source; a clear error when neither knows."""
    if input_shape:
        specs = parse_input_shape(input_shape, dynamic)
        if loaded.inputs and len(loaded.inputs) == len(specs):
            typed = [":" in p for p in input_shape.split(",") if p.strip()]
            for s, known, has_dtype in zip(specs, loaded.inputs, typed):
                s.name, s.high = known.name, known.high
                if not has_dtype:  # '1x512' for a token-id input keeps int64 (the model's own input type)
                    s.dtype = known.dtype
        return specs
    if loaded.inputs:
        return mark_dynamic(copy.deepcopy(loaded.inputs), dynamic)
    raise ConfigError(f"the input shape of {loaded.source} is unknown; pass --input-shape, e.g. 1x3x224x224")


def resolve_target(target: Any) -> Any:
    """Once, at the edge: a runtime name stays that name; a profile name/path becomes its `TargetProfile`
    (a `TargetProfile` passes through), so that its hints (round_to, static shapes) travel with it."""
    from .targets import TargetProfile, load_target

    if isinstance(target, TargetProfile):
        return target
    if str(target) in RUNTIMES:
        return str(target)
    return load_target(target)


def resolve_runtime(target: Any) -> tuple[str, dict[str, Any]]:
    """A runtime name, a target profile name/path or a `TargetProfile` -> (runtime, profile dict or {})."""
    t = resolve_target(target)
    return (t, {}) if isinstance(t, str) else (t.runtime, t.model_dump())


def _save_program(model: nn.Module, inputs: tuple[torch.Tensor, ...], specs: Sequence[InputSpec], path: Path) -> None:
    """torch.export the (compressed) model so later exports (tflite) work without the source."""
    dyn = onnx_export._dynamic_shapes(specs)
    with onnx_export._quiet():
        prog = torch.export.export(model, inputs, dynamic_shapes=dyn)
        torch.export.save(prog, str(path))


def _check_runs(model: nn.Module, inputs: tuple[torch.Tensor, ...], specs: Sequence[InputSpec]) -> None:
    """Run the model once on the example inputs: a wrong --input-shape/dtype is a one-line error, not a traceback
    from deep inside a method or exporter."""
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as e:  # the user's model on the user's shape: any failure is a configuration problem
        shapes = ", ".join(f"{s.name} {'x'.join(map(str, s.shape))}:{s.dtype}" for s in specs)
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"the model fails on example inputs ({shapes}): {type(e).__name__}: {msg}; check "
                          "--input-shape and its dtype") from e


def _output_specs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[dict[str, Any]]:
    with torch.no_grad():
        out = model(*inputs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [{"name": f"output_{i}" if i else "output", "shape": list(o.shape), "dtype": str(o.dtype).replace("torch.", "")}
            for i, o in enumerate(outs)]


def _tflite_int_weights(model: nn.Module, specs: Sequence[InputSpec], path: Path, bits: int,
                        precision: str, step: Step) -> tuple[Path, dict[str, Any]]:
    """Try integer weight storage for LiteRT; keep it only if it validates, else keep the float file and say why."""
    from .errors import ExportMismatchError
    from .export.tflite import quantize_weights

    step("tflite integer weights")
    qpath = path.with_name("model_int.tflite")
    try:
        quantize_weights(path, bits, qpath)
        validate(model, specs, qpath, "tflite", precision)
    except (ExportMismatchError, ImportError, RuntimeError, ValueError) as e:
        qpath.unlink(missing_ok=True)
        return path, {"weights": "float", "reason": f"integer weights did not reproduce the model: {str(e)[:200]}"}
    qpath.replace(path)
    return path, {"weights": f"int{8 if bits > 4 else 4} (ai-edge-quantizer weight-only)"}


def _export_runtime(model: nn.Module, specs: Sequence[InputSpec], root: Path, runtime: str, precision: str,
                    step: Step, fp16: bool = False, weight_bits: int | None = None) -> dict[str, Any]:
    """Write exports/<runtime>/ inside root from model.onnx (or the torch module for tflite) and validate it."""
    t0 = time.perf_counter()
    out_dir = root / "exports" / runtime
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    step(f"export {runtime}")
    if runtime == "onnxruntime":
        path = out_dir / "model.onnx"
        shutil.copy2(root / "model.onnx", path)
    elif runtime == "openvino":
        from .export.openvino import convert

        path = convert(root / "model.onnx", out_dir, fp16=fp16)
        precision = "fp16" if fp16 else precision
    elif runtime == "tflite":
        from .export.tflite import convert as tfl

        path = tfl(model, example_inputs(list(specs)), out_dir)
        if weight_bits:
            path, note = _tflite_int_weights(model, specs, path, weight_bits, precision, step)
    else:
        raise ConfigError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
    t_export = time.perf_counter() - t0
    step(f"validate {runtime}")
    val = validate(model, specs, path, runtime, precision)
    entry = {"file": str(path.relative_to(root)), "precision": precision, "validation": val,
             "seconds": {"export": round(t_export, 3), "validate": round(time.perf_counter() - t0 - t_export, 3)}}
    if runtime == "tflite" and weight_bits:
        entry["weight_storage"] = note
    return entry


def _source_info(loaded: LoadedModel, opts: SourceOptions | None = None) -> dict[str, Any]:
    """How to re-load the source and its checksum (edgekit.source), for eval's FP32 reference."""
    from .source import source_info

    return source_info(loaded, opts)


def compress(model_src: str | Path, method: str, options: dict[str, Any] | None, out: Path,
             input_shape: str | None = None, data: Any = None, overwrite: bool = False,
             runtimes: Sequence[Any] = (), dynamic: list[str] | None = None, arch: str | None = None,
             allow_class: list[str] | None = None, trust_pickle: bool = False, on_step: Step = _noop,
             deploy: str | None = None, arch_args: dict[str, Any] | None = None,
             min_fidelity: float | None = None, kv_cache: bool = False, keep_program: bool = False,
             fidelity_metric: str = "auto", input_range: tuple[float, float] | None = None,
             deploy_data: Any = None, fused_decoder: bool = False,
             deploy_floors: dict[str, float] | None = None) -> Path:
    """Load, apply `method`, write an artifact (model.onnx validated on ONNX Runtime, exports).

    `keep_program`: also keep model.pt2, the compressed model as a float torch.export program (as large as the FP32
    model), which a later `edgekit export ART --target tflite` or a chained compress needs. Off by default: the
    artifact ships what the runtimes run; ONNX Runtime/OpenVINO exports can still be added later from model.onnx.

    `kv_cache`: a causal LM is exported as a decoder with a KV cache for generation (edgekit.genai.build);
    `fused_decoder` lays its ONNX Runtime export out with onnxruntime-genai's model builder (fused attention,
    rotary and norms) holding the method's exact codes (edgekit.genai.fused).

    `arch_args` are the keyword arguments of the `arch` factory. The manifest's `fidelity` entry compares the
    compressed model with the source on held-out inputs (edgekit.fidelity); with `min_fidelity` it records
    `failed` when the headline figure is below it (the artifact is still written, as with recipe gates).
    `fidelity_metric` (auto | top1 | cosine) overrides how its headline reads the outputs (edgekit.fidelity).

    `deploy` ("int8" | "auto", edgekit.deploy.select) lowers the ONNX Runtime/OpenVINO exports to static INT8.
    `input_range` (lo, hi): the range of the model's input values as the app feeds them (e.g. (0, 1) for images
    scaled to [0, 1]); with `deploy` and no data it lets the data-free path quantize the first layer's input too
    (LiteRT full-integer with an int8 input), which is otherwise left float. `deploy_data` (a DataSource or a path):
    the deploy step's calibration samples when they are not the method's `data` (e.g. a method fine-tuned on 28 px
    images that a resize option feeds to a 224 px network, deployed with 224 px calibration images).
    `deploy_floors` ({"mean_cosine": 0.98, ...}, edgekit.deploy.check.FLOORS): the floors the INT8 forms are
    validated against, where the defaults do not fit the model's outputs (recorded in the validation's tolerance).

    `runtimes` may be runtime names, target profile names/paths or `TargetProfile` objects; the profiles'
    `round_to` hint (their least common multiple) fills a method's `round_to` option when the user did not set it.
    """
    return compress_chain(model_src, [(method, dict(options or {}))], out, input_shape, data, overwrite, runtimes,
                          dynamic, arch, allow_class, trust_pickle, on_step, deploy, arch_args=arch_args,
                          min_fidelity=min_fidelity, kv_cache=kv_cache, keep_program=keep_program,
                          fidelity_metric=fidelity_metric, input_range=input_range, deploy_data=deploy_data,
                          fused_decoder=fused_decoder, deploy_floors=deploy_floors)


def check_input_range(input_range: Any, deploy: str | None) -> dict[str, Any]:
    """The deploy options for an --input-range (lo, hi); a clear error for a bad or useless one."""
    if input_range is None:
        return {}
    if deploy is None:
        raise ConfigError("--input-range only matters with --deploy int8|auto (it sets the INT8 input's range); "
                          "add --deploy or drop it")
    try:
        lo, hi = (float(x) for x in input_range)
    except (TypeError, ValueError):
        raise ConfigError(f"--input-range {input_range!r}: give two numbers LO,HI, e.g. 0,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"--input-range {lo},{hi}: need finite LO < HI, e.g. 0,1 or -1,1")
    return {"input_range": (lo, hi)}


def _plan(chain: Sequence[tuple[str, dict[str, Any]]], runtimes: Sequence[Any], data: Any) -> tuple[list, list[str]]:
    """Resolve methods, configs and runtimes before any work, so bad options fail fast."""
    rts, hints = [], {}
    for t in runtimes:
        rt, prof = resolve_runtime(t)
        rts.append(rt)
        if prof.get("round_to"):  # a channel count that suits every target
            hints["round_to"] = math.lcm(hints.get("round_to", 1), int(prof["round_to"]))
    plan = []
    for name, opts in chain:
        mod = get_method(name)
        opts = dict(opts)
        for k, v in hints.items():
            if k in mod.Config.model_fields and k not in opts:
                opts[k] = v
        cfg = parse_config(mod, opts)
        need = method_needs(mod, cfg)
        if need != "none" and data is None:
            raise ConfigError(f"method '{name}' needs {need} data; pass --data FILE")
        plan.append((name, mod, cfg))
    return plan, list(dict.fromkeys(rts))


def _locks_output(fn: Callable[..., Path]) -> Callable[..., Path]:
    """Hold the output folder's lock for the whole verb (not only while writing), so a concurrent run into the same
    -o fails at once instead of silently replacing the first one's artifact."""
    import functools
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Path:
        bound = sig.bind(*args, **kwargs)
        out = bound.arguments.get("out")
        if out is None:
            return fn(*args, **kwargs)
        art.check_path_text(out)
        with art.output_lock(Path(out)):
            return fn(*args, **kwargs)

    return run


def _file_roles(exports: dict[str, dict[str, Any]], keep_program: bool) -> dict[str, str]:
    """What each file of a compress artifact is for (manifest "file_roles")."""
    roles = {"model.onnx": "canonical ONNX of the compressed model (integer weights + DequantizeLinear where the "
                           "method produced codes), validated on ONNX Runtime; source of later ONNX Runtime/OpenVINO "
                           "exports"}
    if keep_program:
        roles["model.pt2"] = ("the compressed model as a float torch.export program (--keep-program): for later "
                              "LiteRT exports and chained compression; not needed at run time")
    for rt, e in exports.items():
        roles[e["file"]] = f"what {rt} runs (precision {e.get('precision')})"
    return roles


@_locks_output
def compress_chain(model_src: str | Path, chain: Sequence[tuple[str, dict[str, Any]]], out: Path,
                   input_shape: str | None = None, data: Any = None, overwrite: bool = False,
                   runtimes: Sequence[Any] = (), dynamic: list[str] | None = None, arch: str | None = None,
                   allow_class: list[str] | None = None, trust_pickle: bool = False, on_step: Step = _noop,
                   deploy: str | None = None, arch_args: dict[str, Any] | None = None,
                   min_fidelity: float | None = None, kv_cache: bool = False, keep_program: bool = False,
                   fidelity_metric: str = "auto", input_range: tuple[float, float] | None = None,
                   deploy_data: Any = None, fused_decoder: bool = False,
                   deploy_floors: dict[str, float] | None = None) -> Path:
    """Apply methods in order (e.g. structured pruning, then quantization) and write one artifact (see compress for
    `keep_program` and `deploy_data`). `data` is a DataSource (`open_data`) or the path of a file/folder, as `--data`
    takes it."""
    from . import fidelity
    from .flops import count_macs, count_params

    fidelity.check_min_fidelity(min_fidelity)
    fidelity.model_role(nn.Identity(), fidelity_metric)  # a bad --fidelity-metric fails before any work
    opts = SourceOptions(arch, dict(arch_args or {}), list(allow_class or []), trust_pickle, input_shape, dynamic)
    if isinstance(data, (str, Path)):  # a file or folder, as the CLI's --data takes it
        from .data import open_data as _open

        data = _open(data)
    if deploy_data is not None and deploy is None:
        raise ConfigError("--deploy-data is the calibration data of --deploy int8|auto; add --deploy or drop it")
    if isinstance(deploy_data, (str, Path)):
        deploy_data = open_data(deploy_data)
    calib_data = deploy_data if deploy_data is not None else data
    plan, rts = _plan(chain, runtimes, data)
    if deploy is not None:  # before any work
        from .deploy import check_request

        check_request(deploy, rts, calib_data)
    deploy_opts = check_input_range(input_range, deploy)
    if deploy_floors:
        from .deploy.check import requested_floors

        deploy_opts["floors"] = requested_floors(deploy_floors, deploy)
    if fused_decoder and not kv_cache:
        raise ConfigError(FUSED_NEEDS_KV)
    if kv_cache:  # before any work
        from .genai.verbs import check_request as check_kv

        check_kv(rts, deploy)
    art.check_output(out, overwrite, protect=[model_src])  # before any work: never fail after an hour of it
    on_step("load")
    loaded = opts.load(model_src)
    src_info = _source_info(loaded, opts)  # before any method: a built-in's/factory's weight checksum is the source's
    specs = resolve_specs(loaded, input_shape, dynamic)
    inputs = example_inputs(specs)
    model = loaded.module
    _check_runs(model, inputs, specs)
    with torch.no_grad():
        fid_n = fidelity.sample_count(count_macs(model, inputs))
    fid_data = data  # the user's samples; the deploy data's when --data does not fit the input (a resize option)
    if deploy_data is not None and getattr(data, "tensors", None) and not fidelity.fits(specs, data):
        fid_data = deploy_data
    fid_inputs, fid_from, fid_text = fidelity.held_out(specs, fid_data, fid_n, model)
    fid_role = fidelity.model_role(model, fidelity_metric)
    fid_inputs, fid_ref = fidelity.source_outputs(model, fid_inputs)  # before any method changes the module
    steps: dict[str, float] = {}
    entries = []
    for name, mod, cfg in plan:
        with torch.no_grad():
            params0, macs0 = count_params(model), count_macs(model, inputs)
        t0 = time.perf_counter()
        on_step(f"compress ({name})")
        import inspect  # a method that can use the real example inputs (shapes, MACs) gets them

        kw = {"example_inputs": inputs} if "example_inputs" in inspect.signature(mod.apply).parameters else {}
        model, report = mod.apply(model, cfg, data, **kw)
        if loaded.kind in ("exported_program", "artifact") and not report.layers_touched:
            from .errors import UnsupportedModelError

            src = (loaded.source if loaded.kind == "exported_program" else
                   art.read_manifest(Path(loaded.source)).get("source", {}).get("path", "the original model"))
            raise UnsupportedModelError(f"{loaded.source} is a torch.export program: its layers are graph ops, not "
                                        f"modules, so '{name}' found nothing to compress; compress the original model "
                                        f"({src}) and chain methods in one run (a recipe with several steps)")
        model.eval()
        steps[f"compress:{name}"] = time.perf_counter() - t0
        with torch.no_grad():
            # the artifact's input spec is authoritative (a method may have counted on a guessed input)
            report.params_before, report.macs_before = params0, macs0
            report.params_after, report.macs_after = count_params(model), count_macs(model, inputs)
        entries.append({"name": name, "config": cfg.model_dump(), "report": report.to_dict()})
    precision = loosest(e["report"]["export_precision"] for e in entries)
    on_step("fidelity")
    fid = fidelity.measure(model, fid_inputs, fid_ref, fid_from, min_fidelity, fid_role, fid_text)
    if kv_cache:  # a decoder with a KV cache: its own graph, validation (vs transformers generate) and folders
        from .genai.verbs import compressed_decoder

        return compressed_decoder(model, loaded, src_info, out, rts, entries, fid, precision,
                                  overwrite, [model_src], on_step, act8=deploy == "int8", fused=fused_decoder)
    with art.staging(out, overwrite, protect=[model_src]) as root:
        on_step("export onnx")
        t0 = time.perf_counter()
        codes = get_codes(model)
        qdq = onnx_export.to_onnx(model, inputs, specs, root / "model.onnx", codes)
        for e in entries:  # int_matmul: which linears run as int8 MatMulInteger, which kept fake-quant, why
            if "int_matmul" in qdq and e["report"]["export_precision"] == "act_quant":
                e["report"]["extra"]["int_matmul"] = qdq["int_matmul"]
        if keep_program:
            _save_program(model, inputs, specs, root / "model.pt2")
        steps["onnx"] = time.perf_counter() - t0
        on_step("validate onnx")
        val = validate(model, specs, root / "model.onnx", "onnxruntime", precision)
        wbits = max((b for c in codes.values() if (b := c.storage_bits()) < 32), default=None)  # 32: kept float
        exports = {rt: _export_runtime(model, specs, root, rt, precision, on_step, weight_bits=wbits) for rt in rts}
        if deploy is not None:  # may replace exports/<runtime>/ files by their INT8 form; entries say which and why
            from .deploy import deploy_exports

            deploy_exports(model, specs, root, exports, deploy, calib_data, on_step, deploy_opts)
        manifest = {"kind": "compress", "source": src_info, "fidelity": fid, "model": "model.onnx",
                    "torch_program": "model.pt2" if keep_program else None, "file_roles": _file_roles(
                        exports, keep_program), "inputs": [s.to_dict() for s in specs],
                    "outputs": _output_specs(model, inputs), "method": entries[-1], "methods": entries,
                    "integer_weights": qdq, "weight_bits": wbits, "export_precision": precision,
                    "validation": {"onnx": val},
                    "exports": exports,
                    "steps": {k: round(v, 3) for k, v in steps.items()}}
        art.write_manifest(root, manifest)
    return Path(out)


FUSED_NEEDS_KV = "--fused-decoder lays out a KV-cache decoder; add --kv-cache (a causal LM) or drop --fused-decoder"


@_locks_output
def export(src: str | Path, target: str | Sequence[str], out: Path | None = None, input_shape: str | None = None,
           overwrite: bool = False, dynamic: list[str] | None = None, arch: str | None = None,
           allow_class: list[str] | None = None, trust_pickle: bool = False, fp16: bool = False,
           on_step: Step = _noop, arch_args: dict[str, Any] | None = None, kv_cache: bool = False,
           fused_decoder: bool = False) -> Path:
    """Export a model or an artifact to one runtime (or target profile), or to several in order; each validated;
    returns the artifact folder.

    Several targets: the first export makes the artifact, the others are added to it (an artifact is its own
    source). If a later one fails, an artifact folder this call created is removed, so no half-requested artifact
    is left behind; an artifact that existed before keeps what it had plus the exports that passed.

    `kv_cache`: a causal LM as a decoder with a KV cache for generation, or one more runtime for such an artifact
    (edgekit.genai.build; a decoder artifact always takes this path)."""
    if fused_decoder and not kv_cache:
        raise ConfigError(FUSED_NEEDS_KV)
    if not isinstance(target, str):
        targets = list(dict.fromkeys(target))
        if not targets:
            raise ConfigError("pass at least one --target (a runtime or a target profile; see `edgekit targets`)")
        for t in targets:  # a misspelt later target fails now, not after the first (slow) export
            resolve_runtime(t)
        kw = dict(fp16=fp16, on_step=on_step, kv_cache=kv_cache, fused_decoder=fused_decoder)
        dest_before = Path(out) if out is not None else Path(src)
        existed = dest_before.exists()
        dest = export(src, targets[0], out, input_shape, overwrite, dynamic, arch, allow_class, trust_pickle,
                      arch_args=arch_args, **kw)
        try:
            for t in targets[1:]:
                export(dest, t, **kw)
        except BaseException:
            if not existed:
                shutil.rmtree(dest, ignore_errors=True)
            raise
        return dest
    runtime, profile = resolve_runtime(target)
    src_p = Path(src)
    if str(src).endswith(".onnx") and src_p.is_file():
        from .export.onnx_source import export_onnx_file

        return export_onnx_file(src_p, runtime, out, overwrite, fp16, on_step)
    on_step("load")
    opts = SourceOptions(arch, dict(arch_args or {}), list(allow_class or []), trust_pickle, input_shape, dynamic)
    from .genai.verbs import export_kv_cache, is_decoder_artifact

    if kv_cache or is_decoder_artifact(src_p):
        return export_kv_cache(src, runtime, out, overwrite, opts, on_step, fused_decoder)
    if art.is_artifact(src_p) and not art.read_manifest(src_p).get("torch_program"):
        from .export.onnx_source import export_lean_artifact

        return export_lean_artifact(src_p, runtime, out, overwrite, fp16, on_step, profile.get("name"))
    loaded = opts.load(src)
    specs = resolve_specs(loaded, input_shape, dynamic)
    _check_runs(loaded.module, example_inputs(specs), specs)
    if profile.get("static_shapes") and any(s.dynamic for s in specs):
        raise ConfigError(f"target '{target}' needs static shapes; drop --dynamic")
    is_art = loaded.kind == "artifact"
    dest = Path(out) if out else (src_p if is_art else None)
    if dest is None:
        raise ConfigError("pass -o DIR for the artifact folder")
    with art.staging(dest, overwrite=overwrite or (is_art and dest.resolve() == src_p.resolve()),
                     base=src_p if is_art else None, protect=[src]) as root:
        if is_art:
            man = art.read_manifest(root, verify=False)  # a copy of the artifact verified by staging
            precision = man.get("export_precision", "fp32")
        else:
            inputs = example_inputs(specs)
            on_step("export onnx")
            onnx_export.to_onnx(loaded.module, inputs, specs, root / "model.onnx")
            _save_program(loaded.module, inputs, specs, root / "model.pt2")
            precision = "fp32"
            man = {"kind": "export", "source": _source_info(loaded, opts), "model": "model.onnx",
                   "torch_program": "model.pt2", "inputs": [s.to_dict() for s in specs],
                   "outputs": _output_specs(loaded.module, inputs), "exports": {}}
        man.setdefault("exports", {})[runtime] = _export_runtime(loaded.module, specs, root, runtime, precision,
                                                                 on_step, fp16, man.get("weight_bits"))
        if profile:
            man["exports"][runtime]["target"] = profile.get("name")
        art.write_manifest(root, man)
    return dest


def check_gates(original: nn.Module, artifact_dir: Path, gates: Any) -> dict[str, Any]:
    """Compare what the artifact ships (its model.onnx, on ONNX Runtime) with the original module on random inputs;
    returns figures and pass/fail."""
    import numpy as np

    from .export.validate import compare
    from .runtimes import open_session

    man = art.read_manifest(Path(artifact_dir))
    specs = [InputSpec(i["name"], i["shape"], i.get("dtype", "float32"), {}, i.get("high")) for i in man["inputs"]]
    sess = open_session(Path(artifact_dir) / man.get("model", "model.onnx"), "onnxruntime")
    figs = {"cosine": [], "top1_agreement": []}
    for seed in range(gates.samples):
        x = example_inputs(specs, seed=1000 + seed)
        with torch.no_grad():
            a = original(*x)
        a = a[0] if isinstance(a, (tuple, list)) else a
        b = sess.run({n: t.numpy() for n, t in zip(sess.input_names, x)})[0]
        f = compare(a.float().numpy(), np.asarray(b, dtype=np.float32))
        figs["cosine"].append(f["cosine"])
        if "top1_agreement" in f:
            figs["top1_agreement"].append(f["top1_agreement"])
    res: dict[str, Any] = {k: float(np.mean(v)) for k, v in figs.items() if v}
    failed = [f"{k} is {v} (non-finite outputs)" for k, v in res.items() if not np.isfinite(v)]
    if gates.min_cosine is not None and res["cosine"] < gates.min_cosine:
        failed.append(f"cosine {res['cosine']:.4f} < {gates.min_cosine}")
    if gates.min_top1_agreement is not None and res.get("top1_agreement", 1.0) < gates.min_top1_agreement:
        failed.append(f"top-1 agreement {res.get('top1_agreement'):.4f} < {gates.min_top1_agreement}")
    res = {k: (v if np.isfinite(v) else None) for k, v in res.items()}  # recorded as null, and failed above
    res["failed"] = failed
    return res


def run_recipe(path: Path, out: Path | None = None, overwrite: bool = False, on_step: Step = _noop,
               executor: str = "local", address: str | None = None, workers: int | None = None,
               timeout_s: float | None = None) -> tuple[Path, dict]:
    """Run a recipe YAML: methods in order, exports, then gates (recorded in the manifest). `executor="ray"` runs
    it on a Ray CPU worker (edgekit.ray_executor.run_recipe_ray; `address`: a cluster, else a local instance)."""
    from .config import Recipe, load_yaml_model

    if executor != "local" or address is not None or workers is not None:
        from .ray_executor import TIMEOUT_S, check_executor, run_recipe_ray

        check_executor(executor, address, workers)
        return run_recipe_ray(path, out, overwrite, on_step, address, workers, timeout_s=timeout_s or TIMEOUT_S)

    rec = load_yaml_model(path, Recipe)
    data = None
    if rec.data:
        from .data import open_data

        data = open_data(rec.data)
    dest = Path(out or rec.out)
    chain = [(s.method, s.options) for s in rec.steps]
    if not chain:  # export only
        targets = rec.targets or ["onnxruntime"]
        export(rec.model, targets[0], dest, rec.input_shape, overwrite, arch=rec.arch, on_step=on_step,
               arch_args=rec.arch_args, allow_class=rec.allow_class, trust_pickle=rec.trust_pickle)
        for t in targets[1:]:
            export(dest, t, on_step=on_step)
        return dest, {"failed": []}
    compress_chain(rec.model, chain, dest, rec.input_shape, data, overwrite, rec.targets, arch=rec.arch,
                   on_step=on_step, arch_args=rec.arch_args, keep_program=rec.keep_program,
                   allow_class=rec.allow_class, trust_pickle=rec.trust_pickle)
    on_step("gates")
    original = load_model(rec.model, rec.arch, rec.allow_class, rec.trust_pickle, rec.arch_args).module
    gates = check_gates(original, dest, rec.gates)
    art.update_manifest(dest, {"recipe": {"path": str(path), "sha256": art.sha256_file(Path(path)),
                                          "config": rec.model_dump(), "gates": gates}})
    return dest, gates


# ---------------------------------------------------------------- the other verbs' work
# The CLI calls only this module for work (tests/unit/test_layering.py checks it); each entry is the owning
# module's public function, imported when first called so `import edgekit.api` stays light.

def _front(module: str, name: str, doc: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module, __package__), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{doc} (`edgekit{module}.{name}`; see there for the arguments)"
    return call


inspect_model = _front(".inspect", "inspect_path", "Parameters, MACs, size, I/O and op histogram of a model file")
verify = _front(".artifact", "verify_artifact", "Check an artifact: checksums, paths, manifest, finite figures")
read_manifest = _front(".artifact", "read_manifest", "An artifact's manifest, checked against the Manifest type")
evaluate = _front(".eval", "evaluate", "Score a model or artifact on a task through a runtime")
profile = _front(".profile_sources", "profile_sources", "Measure (or compare) artifacts/sources on targets")
bench = _front(".bench", "bench", "Variants x targets: compress, export, fidelity, profile")
generate = _front(".genai.run", "generate", "Greedy completion by a decoder artifact's runtime")
demo = _front(".demo", "run_demo", "The main job on the bundled digits CNN")
list_targets = _front(".targets", "list_targets", "The bundled target profiles")
load_target = _front(".targets", "load_target", "One target profile by name or .yaml path")
open_data = _front(".data", "open_data", "A calibration/evaluation data source from a file or folder")
check_own_file = _front(".safety", "check_own_file", "Refuse to overwrite a file edgekit did not create")


def methods() -> list[dict[str, Any]]:
    """Every installed method: name, what data it needs (by default and at most), summary, options with defaults."""
    from .methods import METHODS, get_method
    from .methods import needs as method_needs

    out = []
    for name in METHODS:
        try:
            mod = get_method(name)
        except ImportError:
            continue
        out.append({"name": name, "needs": method_needs(mod, mod.Config()), "needs_at_most": mod.NEEDS,
                    "summary": mod.SUMMARY,
                    "options": {k: f.get_default(call_default_factory=True) for k, f in mod.Config.model_fields.items()}})
    return out
