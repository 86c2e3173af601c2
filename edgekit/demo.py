"""The main job on the bundled digits CNN: fp32 and one compressed variant, exported to all three runtimes,
validated, scored on the digits test split through each runtime, timed briefly, summarised in one table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import api
from .artifact import export_file, read_manifest
from .models.digits_cnn import digits_split
from .profile.runners import open_session

RUNTIMES = ("onnxruntime", "openvino", "tflite")


def _accuracy_and_p50(path: Path, runtime: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test accuracy through the runtime (batch 1) and the median latency of those calls in ms."""
    sess = open_session(path, runtime, threads=1)
    name = sess.input_names[0]
    preds, times = [], []
    for i in range(len(x)):
        t0 = time.perf_counter()
        out = sess.run({name: x[i:i + 1]})[0]
        times.append(time.perf_counter() - t0)
        preds.append(int(out.argmax()))
    return float((np.array(preds) == y).mean()), float(np.median(times[20:]) * 1e3)


def run_demo(out: Path, method: str = "rtn", options: dict[str, Any] | None = None,
             on_step: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Build both artifacts under `out` and return the table rows."""
    out = Path(out)
    _, _, xte, yte = digits_split()
    x, y = xte.numpy(), yte.numpy()
    fp32 = out / "fp32"
    comp = out / method
    api.export("demo", RUNTIMES[0], fp32, overwrite=True, on_step=on_step)
    for rt in RUNTIMES[1:]:
        api.export(fp32, rt, on_step=on_step)  # an artifact is its own source: exports are added to it
    api.compress("demo", method, options or {}, comp, overwrite=True, runtimes=RUNTIMES, on_step=on_step)
    rows = []
    base_p50: dict[str, float] = {}
    for variant, art in (("fp32", fp32), (method, comp)):
        man = read_manifest(art)
        for rt in RUNTIMES:
            on_step(f"measure {variant} on {rt}")
            path = export_file(art, rt)
            size = sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())
            acc, p50 = _accuracy_and_p50(path, rt, x, y)
            base_p50.setdefault(rt, p50)
            val = man["exports"][rt]["validation"]["outputs"]
            rows.append({"variant": variant, "runtime": rt, "size KB": f"{size / 1024:.1f}",
                         "err vs torch": f"{max(o['max_abs'] for o in val.values()):.1e}",
                         "digits acc": f"{acc:.4f}", "p50 ms 1T": f"{p50:.3f}",
                         "vs fp32": f"{p50 / base_p50[rt]:.2f}x"})
    return rows
