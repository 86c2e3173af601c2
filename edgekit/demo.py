"""The main job on the bundled digits CNN: fp32 and one compressed variant, exported to all three runtimes,
validated against PyTorch, scored on the digits test split through each runtime, profiled briefly with the
subprocess profiler (one target per runtime, short protocol), summarised in one table plus profile reports."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import api
from .artifact import export_file, read_manifest
from .models.digits_cnn import digits_split
from .runtimes import open_session

RUNTIMES = ("onnxruntime", "openvino", "tflite")
# one bundled target per runtime; measured on this host with that target's runtime/threads (capped to the host)
DEMO_TARGETS = {"onnxruntime": "x86-avx2-ort", "openvino": "intel-cpu-openvino", "tflite": "rpi5-litert"}


def _accuracy(path: Path, runtime: str, x: np.ndarray, y: np.ndarray) -> float:
    """Digits test accuracy through the runtime, batch 1."""
    sess = open_session(path, runtime, threads=1)
    name = sess.input_names[0]
    preds = [int(sess.run({name: x[i:i + 1]})[0].argmax()) for i in range(len(x))]
    return float((np.array(preds) == y).mean())


def _brief_targets() -> list[Any]:
    """The demo targets with a short protocol (a demo, not a benchmark: `edgekit profile` uses the full one)."""
    from .targets import MeasureProtocol, load_target

    brief = MeasureProtocol(warmup=5, min_runs=30, min_seconds=0.3, max_cv=0.25, max_repeats=1, profile_runs=0)
    return [load_target(DEMO_TARGETS[rt]).model_copy(update={"protocol": brief}) for rt in RUNTIMES]


def run_demo(out: Path, method: str = "rtn", options: dict[str, Any] | None = None,
             on_step: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Build both artifacts under `out`, profile them, write reports, and return the table rows."""
    from .profile import profile_artifact
    from .profile.report import write_reports

    from .methods import get_method, parse_config

    parse_config(get_method(method), dict(options or {}))  # a bad method/option fails before the disk is touched
    out = Path(out)
    _, _, xte, yte = digits_split()
    x, y = xte.numpy(), yte.numpy()
    fp32, comp = out / "fp32", out / method
    api.export("demo", RUNTIMES[0], fp32, overwrite=True, on_step=on_step)
    for rt in RUNTIMES[1:]:
        api.export(fp32, rt, on_step=on_step)  # an artifact is its own source: exports are added to it
    api.compress("demo", method, options or {}, comp, overwrite=True, runtimes=RUNTIMES, on_step=on_step)
    targets = _brief_targets()
    rows: list[dict[str, Any]] = []
    base: dict[str, float] = {}
    for variant, art in (("fp32", fp32), (method, comp)):
        on_step(f"profile {variant} on {', '.join(t.name for t in targets)}")
        doc = profile_artifact(art, targets, out_json=art / "profile.json")
        write_reports(doc, art, "profile")
        man = read_manifest(art)
        for rt, res in zip(RUNTIMES, doc["results"]):
            on_step(f"score {variant} on {rt}")
            path = export_file(art, rt)
            acc = _accuracy(path, rt, x, y)
            val = man["exports"][rt]["validation"]["outputs"]
            row = {"variant": variant, "target": res["target"], "KB": f"{res['file_bytes'] / 1024:.0f}",
                   "err": f"{max(o['max_abs'] for o in val.values()):.0e}", "acc": f"{acc:.3f}"}
            if res["status"] == "ok":
                p50 = res["timing_ms"]["warm"]["p50"]
                base.setdefault(rt, p50)
                row.update({"p50 ms": f"{p50:.3f}" + ("" if res["stable"] else "~"),
                            "x fp32": f"{p50 / base[rt]:.2f}",
                            "MB": f"{res['memory_mb']['model_peak']:.0f}",
                            "est ms": f"{res['estimate']['calibrated_ms']:.3f}" if res.get("estimate") else "-"})
            else:
                row.update({"p50 ms": "error", "x fp32": "-", "MB": "-", "est ms": res["error"][:40]})
            rows.append(row)
    return rows
