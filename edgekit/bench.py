"""Bench matrix: variants (fp32 + each method) x targets -> status, size, fidelity, latency, speed-up, memory.

Every latency ratio compares two measurements of the same run on the same target (ANCHORS: absolute times drift,
ratios repeat). A compressed variant slower than fp32 by more than SLOWER_TOLERANCE is flagged with the ratio and
the op types whose total time grew most, from the runtime's per-op profile.
Writes OUT/bench.json (+ .md, .html) and keeps each (variant, target) artifact under OUT/artifacts/.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, EdgekitError, ExportMismatchError
from .model_io import SourceOptions
from .safety import check_replaceable, safe_component
from .profile.ops import slower_note
from .targets import TargetProfile, load_target

SCHEMA = "edgekit.bench/1"
SLOWER_TOLERANCE = 0.05  # ratios repeat within about +-0.05 here (ANCHORS.md); smaller gaps are noise
N_FIDELITY = 16
PASSED, MISMATCH, EXPORT_FAILED = "passed", "exported but failed validation", "export failed"
COMPRESS_FAILED, MEASURE_FAILED = "compress failed", "measure failed"


def _export_target(spec: Any, t: TargetProfile) -> str:
    """What to pass to api.export: the user's name/path, or the runtime for in-memory profiles."""
    return str(spec) if isinstance(spec, (str, Path)) else t.runtime


def _runtime_file(art: Path, runtime: str) -> Path | None:
    """The exported file of a runtime in an artifact, if the export exists."""
    from .profile import artifact_file
    from .artifact import read_manifest

    try:
        f = artifact_file(art, read_manifest(art), runtime)
    except EdgekitError:
        return None
    return f if f.is_file() else None


def _size_mb(f: Path) -> float:
    """File size incl. an OpenVINO .bin next to the .xml."""
    return (f.stat().st_size + sum(p.stat().st_size for p in f.parent.glob(f.stem + ".bin"))) / 1e6


def method_options_from_sets(methods: Sequence[str], sets: dict[str, Any] | None,
                             per_method: dict[str, dict] | None = None) -> dict[str, dict]:
    """--set METHOD.key=value (that method) and --set key=value (every method whose Config has that field) ->
    options per method. A key no method has, or a METHOD not benched, is a one-line error before any work."""
    from .methods import get_method

    out = {m: dict((per_method or {}).get(m, {})) for m in methods}
    fields = {m: set(get_method(m).Config.model_fields) for m in methods}
    sets = sets or {}
    for key, value in ((k, v) for k, v in sets.items() if "." not in k):
        hit = [m for m in methods if key in fields[m]]
        if not hit:
            raise ConfigError(f"--set {key}: no benched method ({', '.join(methods) or 'none'}) has that option; "
                              "see `edgekit methods`")
        for m in hit:
            out[m][key] = value
    for key, value in ((k, v) for k, v in sets.items() if "." in k):  # METHOD.key wins over a plain key
        meth, _, name = key.rpartition(".")
        if meth not in out:
            raise ConfigError(f"--set {key}: '{meth}' is not among the benched methods "
                              f"({', '.join(methods) or 'none'}); add it to --methods or drop the option")
        if name not in fields[meth]:
            raise ConfigError(f"--set {key}: method {meth} has no option '{name}'; it has "
                              f"{', '.join(sorted(fields[meth]))}")
        out[meth][name] = value
    return out


def check_source(model_src: Any, source: SourceOptions) -> str:
    """Load the source once before any work: a missing file, a bad --arch or --input-shape is a one-line error
    (exit 2), not a matrix of failed cells. Returns its fidelity role (edgekit.fidelity.model_role)."""
    from .api import _check_runs, resolve_specs
    from .fidelity import model_role
    from .model_io import example_inputs

    loaded = source.load(model_src)
    specs = resolve_specs(loaded, source.input_shape, source.dynamic)
    _check_runs(loaded.module, example_inputs(specs), specs)
    return model_role(loaded.module)


def _build(model_src: Any, variants: list[str], tgts: list[TargetProfile], specs: Sequence[Any], root: Path,
           source: SourceOptions, method_options: dict[str, dict],
           data: Any = None, deploy: str | None = None, deploy_floors: dict[str, float] | None = None
           ) -> dict[tuple[str, str], dict[str, Any]]:
    """Compress each variant once and export it per target; every failure becomes a cell status with its reason.
    With `deploy` (int8 | auto) a variant is compressed with every target's runtime and the deploy step, so each
    target's cell is that artifact's export for its runtime (the form the deploy step chose, and why)."""
    from . import api

    kw = {k: v for k, v in source.api_kwargs().items() if v}  # only what the user set
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for v in variants:
        base: Any = model_src
        if v != "fp32":
            dep = {"runtimes": [_export_target(sp, t) for t, sp in zip(tgts, specs)], "deploy": deploy,
                   **({"deploy_floors": deploy_floors} if deploy_floors else {})} if deploy else {}
            if not deploy and any(t.runtime == "tflite" for t in tgts):
                dep["keep_program"] = True  # LiteRT exports are made from the torch program, not model.onnx
            try:
                base = api.compress(model_src, v, method_options.get(v, {}), root / v / "_compressed",
                                    overwrite=True, **kw, **({"data": data} if data is not None else {}), **dep)
            except EdgekitError as e:
                for t in tgts:
                    cells[v, t.name] = {"status": COMPRESS_FAILED, "reason": str(e), "art": None}
                continue
            if deploy:
                for t in tgts:
                    ok = _runtime_file(Path(base), t.runtime) is not None
                    cells[v, t.name] = {"status": PASSED if ok else EXPORT_FAILED, "art": Path(base) if ok else None,
                                        "reason": None if ok else f"no {t.runtime} export in {base}"}
                continue
        for t, spec in zip(tgts, specs):
            dst = root / safe_component(v, "method") / safe_component(t.name, "target name")
            if dst.exists():  # never measure a stale artifact from an earlier bench; never delete anything else
                check_replaceable(dst, protect=[model_src] if isinstance(model_src, (str, Path)) else [])
                shutil.rmtree(dst)
            cell: dict[str, Any] = {"status": PASSED, "reason": None, "art": dst}
            try:
                cell["art"] = Path(api.export(base, _export_target(spec, t), out=dst, overwrite=True, **kw))
            except ExportMismatchError as e:
                cell.update(status=MISMATCH, reason=str(e))
            except Exception as e:  # noqa: BLE001 - any exporter crash is a cell result, not a bench failure
                cell.update(status=EXPORT_FAILED, reason=str(e).strip().splitlines()[0] if str(e).strip() else
                            type(e).__name__)
            if cell["art"] is None or not (Path(cell["art"]) / "manifest.json").is_file() or \
                    _runtime_file(Path(cell["art"]), t.runtime) is None:
                cell["art"] = None
            cells[v, t.name] = cell
    return cells


def data_feeds(data: Any, specs: list[dict[str, Any]], hint: list[dict] | None, n: int) -> list[dict] | None:
    """n feeds from the last n samples of the user's --data (held out from calibration when the data is larger than
    the deploy step's calibration slice), or None when the data does not fit these inputs (then seeded random
    inputs are used, and the row says so). A trailing one-label-per-sample array (training data) is left out;
    several inputs are matched by name to the manifest's inputs."""
    ts = data.model_inputs(len(specs)) if getattr(data, "tensors", None) else []
    if not ts or len(ts) != len(specs) or len(ts[0]) < n:
        return None
    if len(specs) > 1 and [s["name"] for s in specs] != [h.get("name") for h in (hint or [])][:len(specs)]:
        return None
    feeds = []
    for k in range(len(ts[0]) - n, len(ts[0])):
        f = {}
        for s, t in zip(specs, ts):
            a = t[k:k + 1].numpy()
            if len(s["shape"]) != a.ndim or any(d and d != x for d, x in zip(s["shape"], a.shape)):
                return None
            real = s.get("quantized") and a.dtype.kind == "f"  # a full-integer input quantizes real values itself
            f[s["name"]] = a.astype(np.float32 if real else s["dtype"])
        feeds.append(f)
    return feeds


def _outputs(f: Path, t: TargetProfile, hint: list[dict] | None, n: int, data: Any = None) -> dict[str, Any]:
    """First output for n inputs, run in the target's runtime (same inputs for every variant), opened the way its
    artifact was validated: the last n samples of `data` when they fit the inputs, else n seeded random inputs.
    Returns {"outputs": [...], "inputs": "data" | "random"}."""
    from .artifact import read_manifest
    from .profile.measure import host_threads
    from .runtimes import open_session, ov_dynamic_quant, random_feeds, session_inputs

    art = next((p for p in Path(f).parents if (p / "manifest.json").is_file()), None)
    dq = ov_dynamic_quant(read_manifest(art).get("exports", {}).get(t.runtime)) if art else False
    sess = open_session(f, t.runtime, threads=min(t.threads, host_threads()), device=t.device, fallback=t.fallback,
                        ov_dynamic_quant=dq)
    specs = session_inputs(sess)
    feeds = data_feeds(data, specs, hint, n) if data is not None else None
    src = "data" if feeds else "random"
    real = [{**s, "dtype": "float32"} if s.get("quantized") else s for s in specs]  # same real values as FP32's file
    feeds = feeds or [random_feeds(real, hint, seed=1000 + i) for i in range(n)]
    return {"outputs": [np.asarray(sess.run(fd)[0], dtype=np.float64) for fd in feeds], "inputs": src}


def fidelity(ref: list[np.ndarray], out: list[np.ndarray], role: str = "classifier") -> dict[str, Any]:
    """Top-1 agreement for logits-shaped outputs ([batch, classes]) of a classifier, else mean cosine (embedding
    models: edgekit.fidelity.model_role); cosine always reported."""
    cos = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
           for a, b in zip(ref, out)]
    res = {"cosine": float(np.mean(cos)), "n": len(ref)}
    if role == "classifier" and ref and ref[0].ndim == 2 and ref[0].shape[-1] > 1:
        agree = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, out)])
        return {"metric": "top1_agreement", "value": float(agree.mean()), **res}
    return {"metric": "cosine", "value": res["cosine"], **res}


def _row(v: str, t: TargetProfile, cell: dict[str, Any], prof: dict[str, Any] | None) -> dict[str, Any]:
    """One matrix row before the fp32-relative columns."""
    f = _runtime_file(cell["art"], t.runtime) if cell["art"] else None
    ok = prof is not None and prof.get("status") == "ok"
    status = cell["status"]
    reason = cell["reason"]
    if prof is not None and not ok:
        status, reason = MEASURE_FAILED, prof.get("error")
    dep = None
    if cell["art"]:
        from .artifact import read_manifest

        d = (read_manifest(cell["art"]).get("exports", {}).get(t.runtime) or {}).get("deploy")
        dep = {"requested": d.get("requested"), "form": d.get("form"), "why": d.get("why"),
               "warning": d.get("warning")} if d else None
    return {"variant": v, "target": t.name, "runtime": t.runtime, "status": status, "reason": reason, "deploy": dep,
            "artifact": str(cell["art"]) if cell["art"] else None, "size_mb": _size_mb(f) if f else None,
            "p50_ms": prof["timing_ms"]["warm"]["p50"] if ok else None, "stable": prof.get("stable") if ok else None,
            "peak_mb": prof["memory_mb"]["model_peak"] if ok else None, "fidelity": None, "speedup": None,
            "slower": None, "profile": prof}


def bench(model_src: Any, targets: Sequence[Any], methods: Sequence[str], out_dir: str | Path,
          input_shape: Any = None, method_options: dict[str, dict] | None = None,
          source: SourceOptions | None = None, data: Any = None, sets: dict[str, Any] | None = None,
          deploy: str | None = None, executor: str = "local", address: str | None = None,
          workers: int | None = None, timeout_s: float | None = None,
          deploy_floors: dict[str, float] | None = None) -> dict[str, Any]:
    """Run the matrix and write bench.json/.md/.html into out_dir; returns the JSON document.

    The model source takes what `compress` takes (`source`: --arch, --arch-args, --allow-class, --trust-pickle,
    --input-shape, --dynamic); `data` (a path or DataSource) feeds methods that calibrate; `sets` are the CLI's
    --set METHOD.key=value / key=value (method_options_from_sets); `deploy` (int8 | auto) runs the deploy step
    for every compressed variant on every target's runtime (edgekit.deploy), so a row is what that step kept;
    `deploy_floors` ({"mean_cosine": 0.97, ...}) are its validation floors, as compress's --deploy-floor.

    `executor="ray"` runs the matrix as Ray tasks (edgekit.ray_executor: builds on CPU workers, each profile on a
    node advertising `target:NAME`, else on this host; rows gain `placement`); `address` joins a cluster, else a
    local instance with `workers` CPU slots starts and stops here; `timeout_s` bounds each task."""
    from .artifact import now_iso, read_manifest
    from .methods import METHODS
    from .profile import host_info, profile_artifact, provenance, require_runtime
    from .profile.report import write_reports

    if not targets:
        raise ConfigError("no targets given; pass --target NAME (repeatable) or --targets a,b (see "
                          "`edgekit targets list`)")
    if executor != "local" or address is not None or workers is not None:
        from .ray_executor import check_executor

        check_executor(executor, address, workers)
    tgts = [load_target(t) for t in targets]
    for t in tgts:
        require_runtime(t.runtime)
    for m in methods:
        if m not in METHODS:
            from .methods import get_method

            get_method(m)  # raises the 'did you mean' ConfigError
    source = replace(source or SourceOptions(), input_shape=input_shape or (source.input_shape if source else None))
    variants = ["fp32"] + [m for m in methods if m != "fp32"]
    options = method_options_from_sets(variants[1:], sets, method_options)
    if data is not None and not hasattr(data, "tensors"):
        from .data import open_data

        data = open_data(data)
    if deploy is not None:
        from .deploy import check_request

        check_request(deploy, [t.runtime for t in tgts], data)
    if deploy_floors:
        from .deploy.check import requested_floors

        deploy_floors = requested_floors(deploy_floors, deploy)
    role = check_source(model_src, source)
    out_dir = Path(out_dir)
    outs, exe = None, None
    if executor == "ray":
        from .ray_executor import TIMEOUT_S, ray_matrix

        rows, outs, exe = ray_matrix(model_src, variants, tgts, targets, out_dir / "artifacts", source, options,
                                     data, deploy, address, workers, timeout_s=timeout_s or TIMEOUT_S,
                                     n_fidelity=N_FIDELITY, deploy_floors=deploy_floors)
    else:
        cells = _build(model_src, variants, tgts, targets, out_dir / "artifacts", source, options, data, deploy,
                       deploy_floors)
        rows = []
        for t in tgts:  # measure per target, variants back to back, so ratios come from one stretch of time
            for v in variants:
                cell = cells[v, t.name]
                prof = profile_artifact(cell["art"], [t])["results"][0] if cell["art"] else None
                rows.append(_row(v, t, cell, prof))

    def outputs(r: dict[str, Any], t: TargetProfile, hint: Any) -> dict[str, Any]:
        """The row's target-runtime outputs on the fidelity inputs ({"outputs", "inputs"}, as _outputs): computed
        here, or by its Ray build task."""
        if outs is None:
            return _outputs(_runtime_file(Path(r["artifact"]), t.runtime), t, hint, N_FIDELITY, data)
        got = outs.get((r["variant"], t.name))
        if not isinstance(got, dict) or "outputs" not in got:
            raise EdgekitError((got or {}).get("error") or "no outputs came back from the Ray build task")
        return got

    for t in tgts:
        trow = {r["variant"]: r for r in rows if r["target"] == t.name}
        ref = trow["fp32"]
        hint = read_manifest(Path(ref["artifact"])).get("inputs") if ref["artifact"] else None
        try:
            ref_out = outputs(ref, t, hint) if ref["artifact"] else None
        except EdgekitError:
            if outs is None:
                raise
            ref_out = None  # the Ray build task said why in its row; no fidelity for this target
        for r in trow.values():
            if ref_out is not None and r["artifact"]:
                try:
                    got = outputs(r, t, hint)
                    r["fidelity"] = {**fidelity(ref_out["outputs"], got["outputs"], role),
                                     "inputs": ("the last %d samples of --data" % N_FIDELITY if got["inputs"] == "data"
                                                else "%d seeded random inputs" % N_FIDELITY)}
                except Exception as e:  # noqa: BLE001 - shown in the row, the matrix goes on
                    r["fidelity"] = {"metric": "error", "value": None, "error": str(e).splitlines()[0]}
            if r["p50_ms"] and ref["p50_ms"]:
                r["speedup"] = ref["p50_ms"] / r["p50_ms"]
                ratio = r["p50_ms"] / ref["p50_ms"]
                if r["variant"] != "fp32" and ratio > 1 + SLOWER_TOLERANCE:
                    r["slower"] = slower_note(ratio, ref["profile"].get("ops") or {}, r["profile"].get("ops") or {})
                    if not (r["stable"] and ref["stable"]):
                        r["slower"]["summary"] += " (a measurement was unstable: the ratio may be noise)"
    doc = {"schema": SCHEMA, "kind": "bench", "created": now_iso(), "host": host_info(), "provenance": provenance(
               threads=max(t.threads for t in tgts)), "model": str(model_src),
           "input_shape": source.input_shape, "source_options": asdict(source),
           "method_options": options, "deploy": deploy, "deploy_floors": deploy_floors,
           "data": getattr(data, "source", None),
           "targets": [t.name for t in tgts],
           "variants": variants,
           "slower_tolerance": SLOWER_TOLERANCE, "rows": rows}
    if exe is not None:
        doc["executor"] = exe
    write_reports(doc, out_dir, "bench")
    return doc


__all__ = ["bench", "fidelity", "slower_note"]
