"""An app that embeds an edgekit artifact: verify the files against manifest.json, open the export for the chosen
runtime with the recorded runtime settings, check the input against the I/O spec, and classify a digit.

    python examples/embed_app.py ART [--runtime onnxruntime|openvino|tflite]

Only the runtime package is needed at run time (no torch, no edgekit): this is what ships in an app.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def verify(art: Path, manifest: dict, runtime: str) -> None:
    """Refuse to run a tampered or incomplete artifact: the same rules as `edgekit verify ART` (run that when you
    package the app): no symbolic links, every listed file inside the folder with its sha256, the file to run listed,
    validation figures finite."""
    root = art.resolve()
    for p in art.rglob("*"):
        if p.is_symlink():
            sys.exit(f"{p.relative_to(art)}: symbolic link inside the artifact; refusing it")
    for rel, meta in manifest["files"].items():
        p = (art / rel).resolve()
        if not p.is_relative_to(root) or not p.is_file():
            sys.exit(f"{rel}: outside the artifact or missing; refusing it")
        if hashlib.sha256(p.read_bytes()).hexdigest() != meta["sha256"]:
            sys.exit(f"{rel}: checksum mismatch; the artifact was modified or is incomplete")
    ex = manifest["exports"].get(runtime)
    if ex is None or ex["file"] not in manifest["files"]:
        sys.exit(f"no verified {runtime} export in the artifact")
    if "NaN" in json.dumps(ex["validation"]) or "Infinity" in json.dumps(ex["validation"]):
        sys.exit(f"the {runtime} export has non-finite validation figures; refusing it")


def open_model(art: Path, manifest: dict, runtime: str):
    """A callable x -> logits for the runtime, configured as edgekit validated it."""
    ex = manifest["exports"][runtime]
    path = str(art / ex["file"])
    cfg = ex["validation"].get("runtime_config", {})
    if runtime == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        for k, v in cfg.items():
            so.add_session_config_entry(k, v)
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {k: v for k, v in cfg.items()})
        return lambda x: compiled(x)[0]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run(x):
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o)

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--runtime", default="onnxruntime")
    a = ap.parse_args(argv)
    manifest = json.loads((a.artifact / "manifest.json").read_text())
    verify(a.artifact, manifest, a.runtime)
    spec = manifest["inputs"][0]
    model = open_model(a.artifact, manifest, a.runtime)
    from sklearn.datasets import load_digits  # a real digit to classify

    d = load_digits()
    x = (d.images[:1] / 16.0).astype(spec["dtype"]).reshape(spec["shape"])
    logits = model(x)
    print(json.dumps({"runtime": a.runtime, "predicted": int(np.argmax(logits)), "label": int(d.target[0])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
