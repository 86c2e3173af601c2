"""LLM-FP4 through the product: every row is an `edgekit compress ... --method llm_fp4` artifact scored by `edgekit eval`.

    python benchmarks/llm_fp4.py --smollm2-cli --smol-variants fpq_w8a8,fpq_w4a8_e8 [--device cuda]
        SmolLM2 (`--data calib.txt --input-shape 1x512`), perplexity on 16 + 8 windows (key smollm2_cli)
    python benchmarks/llm_fp4.py --headroom-cli 0 1 2 3 [--device cuda]
        how a_headroom's default was chosen: FPQ W8A8 at each headroom on held-out windows 16-23 (key headroom_cli)
    python benchmarks/llm_fp4.py --minilm-cli --cli-variants fpq_w8a8,...
        MiniLM on WordNet-10 through the artifact's ONNX Runtime file (key minilm_wordnet10_cli)
    python benchmarks/llm_fp4.py --export-int-cli
        MiniLM W4A4 MatMulInteger vs fake-quant graphs, with `edgekit profile` (key export_int_cli)

Calibration text: docstrings of stdlib modules (calib_texts, disjoint from the evaluation text); results merge into
benchmarks/results/llm_fp4.json.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

from edgekit.profile import provenance

OUT = Path(__file__).parent / "results" / "llm_fp4.json"
CALIB_MODULES = ["os", "re", "json", "collections", "itertools", "functools", "typing", "argparse", "subprocess",
                 "pathlib", "logging", "unittest", "datetime", "random", "statistics", "csv", "decimal", "textwrap",
                 "shutil", "string", "heapq", "bisect", "dataclasses", "enum", "contextlib", "tempfile"]
# reduced budget for the activation-quant comparison on a shared 2-core box: embeddings (and the tied lm_head)
# float, 4x256 calibration tokens, 128 of them in the MSE, 8 candidates, 1 round
FAST = {"e_bits": 16, "n_seqs": 4, "search_tokens": 128, "n_candidates": 8, "rounds": 1}
W4A4 = {"w_bits": 4, "a_bits": 4, **FAST}
# MiniLM rows (--minilm-cli) by name: W4A4 at a reduced search budget (FAST), W8A8/W4A8 likewise, weight-only FP4
VARIANTS: dict[str, tuple[str, dict]] = {
    "fp4_w4": ("fp4", {"w_bits": 4, "a_bits": None}),
    "minmax_int_w4a4": ("fp4", dict(W4A4, variant="minmax_int")),
    "minmax_fp_w4a4": ("fp4", dict(W4A4, variant="minmax")),
    "fpq_baseline_w4a4": ("fp4", dict(W4A4, variant="fpq_baseline")),
    "fpq_w4a4": ("fp4", dict(W4A4, variant="fpq")),
    "fpq_w4a8": ("fp4", {"w_bits": 4, "a_bits": 8, "variant": "fpq", **FAST}),
    "fpq_w8a8": ("fp4", {"w_bits": 8, "a_bits": 8, "variant": "fpq", **FAST}),
    "fp8_w8": ("fp4", {"w_bits": 8, "a_bits": None}),
}


def calib_texts() -> list[str]:
    """Docstrings of stdlib modules and their public members (deterministic order)."""
    out = []
    for name in CALIB_MODULES:
        mod = importlib.import_module(name)
        out.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr, None)
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 80:
                    out.append(doc)
    return [t for t in out if t]


def export_int_cli(threads: int, rounds: int, work: Path) -> dict:
    """MiniLM W4A4 FPQ through the product, once with `--set int_matmul=true` (the default: uint8 x int8
    MatMulInteger where the codes fit) and once with `int_matmul=false` (fake-quant graph): each an `edgekit
    compress minilm --method llm_fp4 ... --data calib.npy --target onnxruntime --target openvino` artifact (each
    export validated against the torch model) scored by `edgekit eval --task wordnet10 --limit
    200`, then one `edgekit profile minilm ART_INT ART_FQ --target host --target intel-cpu-openvino` (the FP32 export
    made by the profile, interleaved)."""
    import numpy as np

    from _product import artifact_of, profile_vs_fp32, run_row

    from edgekit.api import read_manifest

    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.npy"
    np.save(calib, minilm_calib_ids().numpy())
    rows = {}
    for name, im in (("w4a4_matmulinteger", True), ("w4a4_fakequant", False)):
        rows[name] = run_row("minilm", "llm_fp4", {**W4A4, "int_matmul": im}, work / name, data=calib,
                             targets=("onnxruntime", "openvino"), task="wordnet10", limit=200, threads=threads)
        if "error" not in rows[name]:  # which linears run as MatMulInteger, and why the others do not
            im_rec = (read_manifest(work / name).get("integer_weights") or {}).get("int_matmul") or {}
            rows[name]["int_matmul"] = {k: v for k, v in im_rec.items() if k != "rewritten"}
        print(name, rows[name].get("metrics") or rows[name].get("error"), flush=True)
    arts = [artifact_of(rows[n]) for n in ("w4a4_matmulinteger", "w4a4_fakequant") if "error" not in rows[n]]
    return {"rows": rows, "latency": profile_vs_fp32("minilm", arts, ["host", "intel-cpu-openvino"], rounds)}


def minilm_calib_ids(n_rows: int = 16, seq_len: int = 256, seed: int = 1) -> torch.Tensor:
    """(n_rows, seq_len) int64 MiniLM token ids: WordNet *train* glosses (seeded draw, disjoint from the test split),
    each tokenised with its own [CLS] ... [SEP] and packed back to back into windows of seq_len tokens.

    Packed rather than the method's plain-text path ("\\n\\n".join -> one [CLS] for the whole text, random offsets)
    so the calibration sees [CLS]/[SEP] tokens at the rate the eval does (each gloss is encoded on its own there);
    the BERT outlier channels that those tokens carry would otherwise be missing from the activation ranges.
    """
    import numpy as np

    from edgekit.eval.wordnet import Config as WordNetConfig
    from edgekit.eval.wordnet import load_glosses
    from edgekit.models.real import minilm_tokenizer

    tr = load_glosses(WordNetConfig())[0]
    tok = minilm_tokenizer()
    stream: list[int] = []
    for i in np.random.default_rng(seed).permutation(len(tr)):
        stream += tok(tr[i], truncation=True, max_length=seq_len)["input_ids"]
        if len(stream) >= n_rows * seq_len:
            break
    return torch.tensor(stream[: n_rows * seq_len], dtype=torch.int64).reshape(n_rows, seq_len)


CLI_VARIANTS = ["fpq_w8a8", "fpq_w4a8", "fp4_w4", "fpq_w4a4"]


def minilm_cli(names: list[str], limit: int | None, threads: int, work: Path):
    """Each variant through the product: calibration ids written as a .npy (what `--data` reads), edgekit.compress
    (validates every export; act-quant ones on the calibration samples), then edgekit.evaluate on the artifact's
    ONNX Runtime file. Yields (name, info) with the exact CLI commands."""
    import shutil

    import numpy as np

    import edgekit
    import edgekit.api
    from edgekit.artifact import read_manifest
    from edgekit.eval import evaluate

    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.npy"
    np.save(calib, minilm_calib_ids().numpy())
    for name in names:
        kind, opts = VARIANTS[name]
        if kind != "fp4":
            raise ValueError(f"{name}: only llm_fp4 variants run here")
        opts = {k: v for k, v in opts.items() if k != "variant" or v != "fpq"}
        art = work / name
        if art.exists():
            shutil.rmtree(art)
        sets = " ".join(f"--set {k}={v}" for k, v in opts.items())
        cmd = f"edgekit compress minilm --method llm_fp4 {sets} --data {calib} --target onnxruntime -o {art}"
        info: dict = {"options": opts, "commands": [cmd, f"edgekit eval {art} --task wordnet10 --runtime onnxruntime"
                                                          + (f" --limit {limit}" if limit else "")]}
        t0 = time.perf_counter()
        try:
            edgekit.compress("minilm", "llm_fp4", dict(opts), art, data=edgekit.api.open_data(calib),
                             runtimes=["onnxruntime"])
        except Exception as e:  # noqa: BLE001 - a failed compress is a result (e.g. its export failed validation)
            info.update(error=f"{type(e).__name__}: {str(e)[:400]}", compress_s=round(time.perf_counter() - t0, 1))
            yield name, info
            continue
        man = read_manifest(art)
        rep = man["method"]["report"]
        ex = man["exports"]["onnxruntime"]
        info.update(compress_s=round(time.perf_counter() - t0, 1), bits_per_weight=round(rep["bits_per_weight"], 3),
                    precision=ex.get("precision"), validation_rule=(ex.get("validation") or {}).get("tolerance"),
                    validation_inputs=(ex.get("validation") or {}).get("inputs"),
                    torch_float32_rel_l2=max((o.get("torch_float32_rel_l2") for o in
                                              ((ex.get("validation") or {}).get("outputs") or {}).values()
                                              if o.get("torch_float32_rel_l2") is not None), default=None),
                    onnx_mb=round((art / "model.onnx").stat().st_size / 1e6, 1))
        res = evaluate(art, "wordnet10", runtime="onnxruntime", limit=limit, threads=threads)
        info.update({k: round(v, 4) for k, v in res["metrics"].items()}, samples=res["samples"],
                    eval_s=res["seconds"], runtime=res["runtime"])
        print(name, json.dumps({k: v for k, v in info.items() if k not in ("options", "commands")}), flush=True)
        yield name, info


# SmolLM2 rows through the product: the README table's settings at the method's default calibration budget (8 x 256)
SMOL_CLI_OPTS = {"fpq_w8a8": {"w_bits": 8, "a_bits": 8},
                 "fpq_w4a8": {"w_bits": 4, "a_bits": 8},
                 "fpq_w4a8_e8": {"w_bits": 4, "a_bits": 8, "e_bits": 8},
                 "fp4_w4_e8": {"w_bits": 4, "a_bits": 16, "e_bits": 8},
                 "fpq_w4a4_e8": {"w_bits": 4, "a_bits": 4, "e_bits": 8},
                 # the paper's W4A4 ordering and the comparison rows, default embeddings (e_bits = w_bits)
                 "fpq_w4a4": {"w_bits": 4, "a_bits": 4},
                 "fpq_baseline_w4a4": {"w_bits": 4, "a_bits": 4, "variant": "fpq_baseline"},
                 "minmax_fp_w4a4": {"w_bits": 4, "a_bits": 4, "variant": "minmax"},
                 "minmax_int_w4a4": {"w_bits": 4, "a_bits": 4, "variant": "minmax_int"},
                 "minmax_int_w8a8": {"w_bits": 8, "a_bits": 8, "variant": "minmax_int"},
                 "fp4_w4": {"w_bits": 4, "a_bits": 16},
                 "fp8_w8": {"w_bits": 8, "a_bits": 16}}
SMOL_CLI_METHOD = {"rtn_w4": ("rtn", {"bits": 4})}  # rows of another method (default: llm_fp4 + SMOL_CLI_OPTS)
SMOL_CLI = ["fpq_w8a8", "fpq_w4a8_e8", "fpq_w4a8"]


def smollm2_cli(names: list[str], device: str, threads: int, work: Path) -> None:
    """Each variant: `edgekit compress smollm2 --method llm_fp4 ... --data calib.txt --input-shape 1x512 --target
    onnxruntime` (calibration text: calib_texts() as paragraphs), then `edgekit eval ART --task perplexity
    --runtime onnxruntime` (16 + 8 windows of 512 tokens, FP32 reference of the same windows). Key smollm2_cli."""
    from _product import run_row

    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.txt"
    calib.write_text("\n\n".join(calib_texts()), encoding="utf-8")
    key = "smollm2_cli"
    for name in names:
        method, base = SMOL_CLI_METHOD.get(name, ("llm_fp4", SMOL_CLI_OPTS.get(name)))
        if base is None:
            raise SystemExit(f"unknown SmolLM2 variant {name!r}; known: {sorted(SMOL_CLI_OPTS) + sorted(SMOL_CLI_METHOD)}")
        opts = dict(base, **({"device": device} if device != "cpu" and method == "llm_fp4" else {}))
        row = run_row("smollm2", method, opts, work / name, data=calib, task="perplexity", threads=threads,
                      input_shape="1x512")
        print(name, json.dumps({k: v for k, v in row.items() if k not in ("options", "commands", "report_extra")}),
              flush=True)
        res = json.loads(OUT.read_text()) if OUT.is_file() else {}
        sec = res.setdefault(key, {"setup": {}, "variants": {}})
        sec["setup"] = {"model": "smollm2 (built-in), artifact input 1x512", "task": "perplexity (16 Python-docs + 8 "
                        "GPL-3 windows of 512 tokens)", "runtime": "onnxruntime", "threads": threads,
                        "calibration": "calib_texts() written as paragraphs to calib.txt (--data)"}
        sec["variants"][name] = {**row, "provenance": provenance(threads=threads)}
        OUT.write_text(json.dumps(res, indent=1))
        shutil.rmtree(work / name, ignore_errors=True)  # 0.5 GB each; the figures are in the JSON


def headroom_cli(threads: int, work: Path, headrooms: list[int], device: str = "cpu") -> None:
    """How `a_headroom`'s default was chosen, through the product: FPQ W8A8 at each headroom, `edgekit compress
    smollm2 --method llm_fp4 --set w_bits=8 --set a_bits=8 --set a_headroom=H --data calib.txt --input-shape 1x512`,
    scored on a held-out split (Python-docs windows 16-23, disjoint from the reported 0-15) by `edgekit eval ART
    --task perplexity --set python_docs_offset=16 --set python_docs_windows=8 --set gpl3_windows=0`. Key
    headroom_cli (rows merged by name); --device cuda adds `--set device=cuda` (calibration on the GPU)."""
    from _product import run_row

    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.txt"
    calib.write_text("\n\n".join(calib_texts()), encoding="utf-8")
    split = {"python_docs_offset": 16, "python_docs_windows": 8, "gpl3_windows": 0}
    for h in headrooms:
        name = f"fpq_w8a8_h{h}"
        opts = {"w_bits": 8, "a_bits": 8, "a_headroom": h, **({"device": device} if device != "cpu" else {})}
        row = run_row("smollm2", "llm_fp4", opts, work / name, data=calib,
                      task="perplexity", threads=threads, input_shape="1x512", eval_opts=split)
        print(name, row.get("metrics") or row.get("error"), flush=True)
        res = json.loads(OUT.read_text()) if OUT.is_file() else {}
        sec = res.setdefault("headroom_cli", {"setup": {}, "rows": {}})
        sec["setup"] = {"model": "smollm2 (built-in), artifact input 1x512", "split": split, "threads": threads,
                        "calibration": "calib_texts() as paragraphs (--data), the method's default budget"}
        sec["rows"][name] = {**row, "provenance": provenance(threads=threads)}
        OUT.write_text(json.dumps(res, indent=1))
        shutil.rmtree(work / name, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="calibration device of --smollm2-cli / --headroom-cli (cpu, cuda)")
    ap.add_argument("--headroom-cli", type=int, nargs="*", default=None, help="SmolLM2 FPQ W8A8 at these a_headroom "
                    "values through compress/eval on the held-out windows 16-23 (key headroom_cli)")
    ap.add_argument("--export-int-cli", action="store_true", help="MiniLM W4A4 MatMulInteger vs fake-quant through "
                    "edgekit compress/eval/profile (key export_int_cli; --reps profile rounds)")
    ap.add_argument("--reps", type=int, default=30, help="edgekit profile rounds (--export-int-cli)")
    ap.add_argument("--minilm-limit", type=int, default=None, help="test glosses (default: all 1,000)")
    ap.add_argument("--minilm-cli", action="store_true", help="MiniLM variants through edgekit.compress + the "
                    "artifact's ONNX Runtime file (key minilm_wordnet10_cli)")
    ap.add_argument("--cli-variants", default=",".join(CLI_VARIANTS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit-llm-fp4-cli"))
    ap.add_argument("--smollm2-cli", action="store_true", help="SmolLM2 variants through edgekit.compress (1x512 "
                    "artifact, --data calib.txt) + `edgekit eval ART --task perplexity` on its ONNX Runtime file "
                    "(key smollm2_cli); --smol-variants picks them, --device the calibration device")
    ap.add_argument("--smol-variants", default=",".join(SMOL_CLI))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.smollm2_cli:
        smollm2_cli(args.smol_variants.split(","), args.device, args.threads, args.work)
        return
    if args.minilm_cli:
        key = "minilm_wordnet10_cli"
        res = json.loads(OUT.read_text()) if OUT.is_file() else {}
        sec = res.get(key, {})
        sec["setup"] = {"model": "minilm (built-in)", "task": "wordnet10", "runtime": "onnxruntime",
                        "test_glosses": args.minilm_limit or 1000, "threads": args.threads,
                        "calibration": "minilm_calib_ids() saved as calib.npy for --data"}
        sec.setdefault("variants", {})
        for name, info in minilm_cli(args.cli_variants.split(","), args.minilm_limit, args.threads, args.work):
            sec["variants"][name] = {**info, "provenance": provenance(threads=args.threads)}
            res = json.loads(OUT.read_text()) if OUT.is_file() else {}
            res[key] = sec
            OUT.write_text(json.dumps(res, indent=1))
        return
    if args.headroom_cli is not None:
        headroom_cli(args.threads, args.work, args.headroom_cli, args.device)
        return
    if args.export_int_cli:
        res = json.loads(OUT.read_text()) if OUT.is_file() else {}
        res["export_int_cli"] = {**export_int_cli(args.threads, args.reps, args.work),
                                 "provenance": provenance(threads=args.threads)}
        OUT.write_text(json.dumps(res, indent=1))
        return
    ap.error("pick a part: --smollm2-cli, --minilm-cli, --headroom-cli H..., or --export-int-cli")


if __name__ == "__main__":
    main()
