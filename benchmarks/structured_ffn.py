"""Structured FFN on MiniLM (wordnet10) and SmolLM2 (perplexity) vs FP32 and magnitude pruning; latency on 3 runtimes.

Parts (run one at a time, under nice; each writes its key of benchmarks/results/structured_ffn.json):
  python benchmarks/structured_ffn.py minilm  [--limit 200] [--train-steps 10] [--train-ratios 0.3125]
  python benchmarks/structured_ffn.py smollm2 [--limit 2] [--train-steps 0]
  python benchmarks/structured_ffn.py latency [--runs 30] [--model smollm2]
  python benchmarks/structured_ffn.py cli --model minilm --cli-projected --train-ratios 0.625 --train-steps 100
      (the same rows through edgekit.compress + edgekit.evaluate on the artifact; key cli_<model>)
Ratios 0.625 / 0.3125 are the paper's "63% / 32%" FFN parameters (of the replaced layers; block 0 stays dense).
Baselines at the same count: unstructured magnitude pruning of each replaced FFN weight to the same number of
nonzeros (zeros only: no size/speed gain), and structured neuron pruning (intermediate neurons ranked by the product
of their in/out weight norms, physically removed). Recovery: distillation (token-level MSE for MiniLM, KL for
SmolLM2) on text disjoint from the evaluation (WordNet verb/adjective glosses; stdlib module docstrings).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch
from torch import nn

from edgekit.data import DataSource
from edgekit.eval import evaluate
from edgekit.methods import structured_ffn as sf

OUT = Path(__file__).parent / "results" / "structured_ffn.json"
KINDS = ("lowrank", "blockdense", "blockshuffle")
RATIOS = (0.625, 0.3125)
THREADS = 2


def log(*a) -> None:
    print(*a, flush=True)


def load(key: str, fresh: dict) -> dict:
    """Earlier results of this part (so a --skip-base run adds rows instead of replacing them)."""
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    return {**fresh, "rows": data.get(key, {}).get("rows", {})}


def save(key: str, value: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    from edgekit.profile import provenance

    data[key] = {**value, "provenance": provenance(threads=THREADS)}  # command, commit, versions, CPU/ISA, load
    OUT.write_text(json.dumps(data, indent=1, default=float))


def ffn_groups(model: nn.Module) -> dict[int, list[tuple[str, nn.Linear]]]:
    """Block index -> its FFN linears (module order), as the method sees them."""
    out: dict[int, list] = {}
    for n, lin, b in sf.find_ffn(model, sf.DEFAULT_PATTERNS):
        out.setdefault(b, []).append((n, lin))
    return out


def magnitude(model: nn.Module, ratio: float) -> nn.Module:
    """Unstructured: each replaced FFN weight keeps its round(ratio·numel) largest |w| (block 0 untouched): the
    product's `--method magnitude --set scope=ffn --set sparsity=1-ratio`."""
    from edgekit.methods import get_method, parse_config

    mod = get_method("magnitude")
    return mod.apply(model, parse_config(mod, {"scope": "ffn", "sparsity": 1 - ratio}))[0]


def neurons(model: nn.Module, ratio: float) -> nn.Module:
    """Structured: keep round(ratio·d_ff) intermediate neurons by ∏ of in-row / out-column norms (block 0 untouched)."""
    groups = ffn_groups(model)
    for b in sorted(groups)[1:]:
        lins = groups[b]
        ins, out = lins[:-1], lins[-1]  # (up[, gate]) then down, in module order
        score = out[1].weight.norm(dim=0)
        for _, lin in ins:
            score = score * lin.weight.norm(dim=1)
        keep = score.topk(round(ratio * score.numel())).indices.sort().values
        for name, lin in ins:
            new = nn.Linear(lin.in_features, len(keep), bias=lin.bias is not None)
            new.weight.data = lin.weight.data[keep].clone()
            if lin.bias is not None:
                new.bias.data = lin.bias.data[keep].clone()
            model.set_submodule(name, new)
        name, lin = out
        new = nn.Linear(len(keep), lin.out_features, bias=lin.bias is not None)
        new.weight.data = lin.weight.data[:, keep].clone()
        if lin.bias is not None:
            new.bias.data = lin.bias.data.clone()
        model.set_submodule(name, new)
    return model


def run_minilm(args) -> None:
    from edgekit.models.real import load_minilm

    enc = load_minilm()[0]
    texts = [ln.split("|", 1)[1].strip() for f in ("data.verb", "data.adj")
             for ln in Path(f"/usr/share/wordnet/{f}").read_text(errors="replace").splitlines()
             if "|" in ln and not ln.startswith(" ")]
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:4000]]
    res = load("minilm", {"limit": args.limit})

    def ev(tag: str, model: nn.Module, extra: dict | None = None) -> None:
        t0 = time.perf_counter()
        r = evaluate(model, "wordnet10", limit=args.limit, threads=THREADS)
        res["rows"][tag] = {**r["metrics"], **(extra or {}), "eval_s": round(time.perf_counter() - t0, 1)}
        log(tag, {k: round(v, 4) if isinstance(v, float) else v for k, v in res["rows"][tag].items()})
        save("minilm", res)

    if not args.skip_base:
        ev("fp32", enc, {"ffn_ratio": 1.0})
        for ratio in RATIOS:
            for kind in KINDS:
                m = copy.deepcopy(enc)
                _, rep = sf.apply(m.bert, sf.Config(kind=kind, param_ratio=ratio), None)
                ev(f"{kind}@{ratio}", m, {"ffn_ratio": rep.extra["ratio_replaced"], "params": rep.params_after})
            ev(f"magnitude@{ratio}", magnitude(copy.deepcopy(enc), ratio), {"ffn_ratio": ratio})
            ev(f"neurons@{ratio}", neurons(copy.deepcopy(enc), ratio), {"ffn_ratio": ratio})
    for ratio in args.train_ratios:
        for kind in KINDS:
            m = copy.deepcopy(enc)
            t0 = time.perf_counter()
            cfg = sf.Config(kind=kind, param_ratio=ratio, train_steps=args.train_steps, batch=args.batch,
                            seq_len=128, lr=args.lr, tokenizer=None, progress=False)
            _, rep = sf.apply(m.bert, cfg, DataSource(texts=texts))
            tr = rep.extra["training"]
            ev(f"{kind}@{ratio}+distill", m, {"ffn_ratio": rep.extra["ratio_replaced"], "train_s":
               round(time.perf_counter() - t0, 1), **{k: tr[k] for k in ("steps", "batch", "seq_len", "lr",
                                                     "fixed_batch_loss_before", "fixed_batch_loss_after")}})


def docstrings() -> list[str]:
    """Docstrings of stdlib modules and their public members: Python text disjoint from pydoc topics."""
    import importlib
    import inspect

    out = []
    for name in ("json", "os", "re", "collections", "itertools", "functools", "pathlib", "argparse", "logging",
                 "subprocess", "typing", "dataclasses", "datetime", "string", "textwrap", "shutil", "csv", "random"):
        mod = importlib.import_module(name)
        out.append(inspect.getdoc(mod) or "")
        out += [inspect.getdoc(getattr(mod, a)) or "" for a in dir(mod) if not a.startswith("_")
                and callable(getattr(mod, a, None)) and getattr(getattr(mod, a), "__module__", "") == name]
    return [t for t in out if len(t) > 40]


CORPUS_SKIP = {"this", "antigravity", "pydoc_data", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
               "ensurepip", "venv", "pydoc"}


def stdlib_corpus() -> list[str]:
    """A larger training text (~0.8 MB here): docstrings of every importable public stdlib module, its public
    classes, functions and methods (sorted, deduplicated; pydoc/pydoc_data, whose topics are the evaluation text,
    excluded)."""
    import contextlib
    import importlib
    import inspect
    import io
    import warnings

    seen, out = set(), []
    for name in sorted(sys.stdlib_module_names):
        if name in CORPUS_SKIP or name.startswith("_"):
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - platform-specific or deprecated modules are skipped
            continue
        objs = [mod]
        for a in sorted(dir(mod)):
            o = getattr(mod, a, None)
            if a.startswith("_") or getattr(o, "__module__", None) != name:
                continue
            if inspect.isclass(o) or inspect.isfunction(o) or inspect.isbuiltin(o):
                objs.append(o)
                if inspect.isclass(o):
                    objs += [f for m, f in sorted(vars(o).items()) if not m.startswith("_")
                             and (inspect.isfunction(f) or inspect.ismethoddescriptor(f))]
        for o in objs:
            d = (mod.__doc__ or "") if o is mod else (inspect.getdoc(o) or "")
            d = inspect.cleandoc(d) if d else ""
            if len(d) > 40 and d not in seen:
                seen.add(d)
                out.append(d)
    return out


TRAIN_TEXTS = {"docstrings": docstrings, "stdlib": stdlib_corpus}


def run_smollm2(args) -> None:
    from edgekit.models.real import CausalLMLogits, load_smollm2

    lm = load_smollm2()[0]
    limit = args.limit or None  # 0: the task's default windows (16 Python docs + 8 GPL-3)
    key = args.section or "smollm2"
    res = load(key, {"limit_windows_per_text": limit or "task default (16 + 8)"})

    def ev(tag: str, model: nn.Module, extra: dict | None = None) -> None:
        t0 = time.perf_counter()
        r = evaluate(CausalLMLogits(model).eval(), "perplexity", limit=limit, threads=THREADS)
        res["rows"][tag] = {**r["metrics"], **(extra or {}), "eval_s": round(time.perf_counter() - t0, 1)}
        res["reference"] = r["reference"]
        log(tag, {k: round(v, 4) if isinstance(v, float) else v for k, v in res["rows"][tag].items()})
        save(key, res)

    if not args.skip_base:
        want = set(args.base_rows.split(",")) if args.base_rows else None
        if not want or "fp32" in want:
            ev("fp32", lm, {"ffn_ratio": 1.0})
        for ratio in RATIOS:
            for kind in KINDS:
                if want and kind not in want:
                    continue
                m = copy.deepcopy(lm)
                _, rep = sf.apply(m, sf.Config(kind=kind, param_ratio=ratio), None)
                ev(f"{kind}@{ratio}", m, {"ffn_ratio": rep.extra["ratio_replaced"], "params": rep.params_after})
            if not want or "magnitude" in want:
                ev(f"magnitude@{ratio}", magnitude(copy.deepcopy(lm), ratio), {"ffn_ratio": ratio})
            if not want or "neurons" in want:
                ev(f"neurons@{ratio}", neurons(copy.deepcopy(lm), ratio), {"ffn_ratio": ratio})
    texts = TRAIN_TEXTS[args.train_text]() if args.train_ratios else []
    for ratio in args.train_ratios:
        for kind in args.train_kinds:
            m = copy.deepcopy(lm)
            t0 = time.perf_counter()
            cfg = sf.Config(kind=kind, param_ratio=ratio, train_steps=args.train_steps, batch=args.batch,
                            seq_len=args.seq_len, lr=args.lr, tokenizer=None, progress=False, device=args.device)
            _, rep = sf.apply(m, cfg, DataSource(texts=texts))
            tr = rep.extra["training"]
            ev(f"{kind}@{ratio}+distill{args.row_suffix}", m, {
                "ffn_ratio": rep.extra["ratio_replaced"], "train_s": round(time.perf_counter() - t0, 1),
                "train_text": f"{args.train_text} ({sum(map(len, texts))} chars)",
                **{k: tr[k] for k in ("steps", "batch", "seq_len", "lr", "device", "fixed_batch_loss_before",
                                      "fixed_batch_loss_after", "train_loss_first", "train_loss_last")}})


def run_latency(args) -> None:
    """p50 latency (batch 1, sequence 128) of FP32 and FFN-compressed MiniLM or SmolLM2 (prefill, logits),
    interleaved, per runtime; a runtime whose conversion fails is recorded with the error, not fatal."""
    from edgekit.export.onnx import to_onnx
    from edgekit.export.openvino import convert as to_ov
    from edgekit.export.tflite import convert as to_tflite
    from edgekit.export.validate import validate
    from edgekit.model_io import InputSpec, example_inputs
    from edgekit.profile import interleaved

    if args.model == "smollm2":
        from edgekit.models.real import CausalLMLogits, load_smollm2

        base = load_smollm2()[0]
        specs = [InputSpec("input_ids", [1, 128], "int64", high=49152)]
        wrap, core, key = CausalLMLogits, (lambda m: m.lm), "latency_smollm2"
        cases = [("lowrank", 0.625), ("blockshuffle", 0.625), ("lowrank", 0.3125), ("blockdense", 0.3125),
                 ("blockshuffle", 0.3125)]
    else:
        from edgekit.models.real import load_minilm

        base = load_minilm()[0]
        specs = [InputSpec("input_ids", [1, 128], "int64", high=30522), InputSpec("attention_mask", [1, 128], "int64")]
        wrap, core, key = (lambda m: m), (lambda m: m.bert), "latency"
        cases = [("lowrank", 0.625), ("lowrank", 0.3125), ("blockdense", 0.3125), ("blockshuffle", 0.3125)]
    inputs = example_inputs(specs)
    variants = {"fp32": (wrap(base).eval(), 1.0)}
    for kind, ratio in cases:
        m = copy.deepcopy(base)
        _, rep = sf.apply(core(wrap(m)) if args.model == "minilm" else m, sf.Config(kind=kind, param_ratio=ratio),
                          None)
        variants[f"{kind}@{ratio}"] = (wrap(m).eval(), rep.extra["ratio_all_ffn"])
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgekit_sffn_latency_{args.model}"
    runtimes = [r for r in ("onnxruntime", "openvino", "tflite") if r in args.runtimes]
    files, res = {}, {"model": args.model, "threads": THREADS, "runs": args.runs, "seq": 128, "rows": {}}
    for tag, (m, ratio) in variants.items():
        d = root / tag
        d.mkdir(parents=True, exist_ok=True)
        row = res["rows"].setdefault(tag, {"ffn_ratio_all": ratio})
        t0 = time.perf_counter()
        to_onnx(m, inputs, specs, d / "model.onnx")
        row["onnx_mb"] = round((d / "model.onnx").stat().st_size / 2**20 + sum(
            f.stat().st_size for f in d.glob("*.data")) / 2**20, 1)
        for rt in runtimes:
            try:
                if rt == "onnxruntime":
                    f = d / "model.onnx"
                elif rt == "openvino":
                    f = to_ov(d / "model.onnx", d / "ov")
                else:
                    f = to_tflite(m, inputs, d / "tfl")
                val = validate(m, specs, f, rt, n_random=1, threads=THREADS)["outputs"]
                files[(rt, tag)] = f
                row[f"{rt}_rel_l2"] = max(v["rel_l2"] for v in val.values())
            except Exception as e:  # noqa: BLE001 - recorded in the results, the other runtimes go on
                row[f"{rt}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        log(tag, "exported + validated in", round(time.perf_counter() - t0, 1), "s", row)
    feeds = [x.numpy() for x in inputs]  # by position: LiteRT files name their inputs differently
    for rt in runtimes:  # one interleaved loop per runtime, in a worker process; fp32 (when it converted) first
        tags = [t for t in res["rows"] if (rt, t) in files]
        if not tags:
            continue
        r = interleaved([{"path": files[(rt, t)], "runtime": rt, "threads": THREADS, "label": t} for t in tags],
                        rounds=args.runs, warmup=3, feeds=feeds, with_provenance=False)
        if r["status"] != "ok":
            for t in tags:
                res["rows"][t][f"{rt}_error"] = f"timing: {r['error']}"
            continue
        p50 = {f["label"]: f["timing_ms"]["p50"] for f in r["files"]}
        for t in tags:
            row = res["rows"][t]
            row[f"{rt}_p50_ms"] = round(p50[t], 2)
            if "fp32" in p50:
                row[f"{rt}_speedup"] = round(p50["fp32"] / p50[t], 3)
    for tag, row in res["rows"].items():
        log(tag, row)
    save(key, res)


def run_cli(args) -> None:
    """Rows through the product (key cli_<model>): `edgekit compress <model> --method structured_ffn ...` artifacts
    (recovery rows with --data TEXT.txt), scored by `edgekit eval ART` on their ONNX Runtime file. MiniLM: WordNet-10
    (--limit test glosses, default 200), training text the verb/adjective glosses; SmolLM2: perplexity of a 1x512
    artifact (16 + 8 windows), training text the stdlib corpus (--train-text)."""
    from _product import run_row

    from edgekit.profile import provenance

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    smol = args.model == "smollm2"
    if smol:
        texts = TRAIN_TEXTS[args.train_text]()
    else:
        texts = [ln.split("|", 1)[1].strip() for f in ("data.verb", "data.adj")
                 for ln in Path(f"/usr/share/wordnet/{f}").read_text(errors="replace").splitlines()
                 if "|" in ln and not ln.startswith(" ")]
        texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:4000]]
    train_txt = work / "train.txt"
    train_txt.write_text("\n\n".join(t.replace("\n\n", "\n") for t in texts), encoding="utf-8")
    key = f"cli_{args.model}"
    rows = [(k, r, 0) for r in args.cli_ratios for k in args.cli_kinds] if args.cli_projected else []
    rows += [(k, r, args.train_steps) for r in args.train_ratios for k in args.train_kinds]
    for kind, ratio, steps in rows:
        method, opts = "structured_ffn", {"kind": kind, "param_ratio": ratio}
        if kind == "magnitude":  # the unstructured baseline at the same FFN count, through the product too
            if steps:
                raise SystemExit("magnitude rows take no training steps; list magnitude in --cli-kinds only")
            method, opts = "magnitude", {"scope": "ffn", "sparsity": round(1 - ratio, 6)}
        if steps:
            opts.update(train_steps=steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr)
            if args.device != "cpu":
                opts["device"] = args.device
        tag = f"{kind}@{ratio}" + (f"+distill{steps}" if steps else "")
        row = run_row(args.model, method, opts, work / tag.replace("@", "_").replace("+", "_"),
                      data=train_txt if steps else None, targets=("onnxruntime",),
                      task="perplexity" if smol else "wordnet10", limit=None if smol else args.limit,
                      threads=THREADS, input_shape="1x512" if smol else None)
        log(tag, {k: v for k, v in row.items() if k not in ("options", "commands", "report_extra")})
        res = json.loads(OUT.read_text()) if OUT.is_file() else {}
        sec = res.setdefault(key, {"rows": {}})
        sec["setup"] = {"model": args.model, "eval": "perplexity, 1x512 artifact, 16 + 8 windows" if smol else
                        f"wordnet10, {args.limit} test glosses", "runtime": "onnxruntime",
                        "train_text": f"{'stdlib corpus' if smol else 'WordNet verb/adj glosses'} as paragraphs "
                                      f"({sum(map(len, texts))} chars)"}
        sec["rows"][tag] = {**row, "provenance": provenance(threads=THREADS)}
        OUT.write_text(json.dumps(res, indent=1))
        if smol:
            shutil.rmtree(work / tag.replace("@", "_").replace("+", "_"), ignore_errors=True)


def run_cli_latency(args) -> None:
    """`edgekit profile minilm ART...` on the cli part's projection-only lowrank (and neurons) artifacts (ONNX Runtime on the host,
    OpenVINO), interleaved with FP32 (exported by the profile itself); key cli_minilm/latency."""
    from _product import artifact_of, profile_vs_fp32

    from edgekit.profile import provenance

    if args.model == "smollm2":
        return cli_latency_smollm2(args)
    rows = json.loads(OUT.read_text())["cli_minilm"]["rows"]
    arts = [artifact_of(rows[t]) for t in ("lowrank@0.625", "lowrank@0.3125", "neurons@0.625", "neurons@0.3125")
            if t in rows and "error" not in rows[t]]
    lat = profile_vs_fp32("minilm", arts, ["host", "intel-cpu-openvino"], args.runs)
    res = json.loads(OUT.read_text())
    res["cli_minilm"]["latency"] = {**lat, "provenance": provenance(threads=THREADS)}
    OUT.write_text(json.dumps(res, indent=1))


SMOL_LATENCY_CASES = [("lowrank", 0.625), ("blockshuffle", 0.625), ("lowrank", 0.3125), ("blockdense", 0.3125),
                      ("blockshuffle", 0.3125)]


def cli_latency_smollm2(args) -> None:
    """SmolLM2 prefill through the product (key cli_smollm2/latency): `edgekit compress smollm2 --method
    structured_ffn --set kind=K --set param_ratio=R --input-shape 1x128` (projection only: a recovered model has the
    same layers and shapes, so the same speed), then `edgekit profile smollm2 ART... --input-shape 1x128` against
    the FP32 export the profile makes, interleaved, on ONNX Runtime (host) and OpenVINO."""
    import edgekit
    from _product import profile_vs_fp32

    from edgekit.profile import provenance

    work = Path(args.work)
    arts, cmds = [], []
    for kind, ratio in SMOL_LATENCY_CASES:
        art = work / f"lat_{kind}_{ratio}"
        t0 = time.perf_counter()
        if not (art / "manifest.json").is_file() or args.fresh:  # projection only: deterministic, reusable
            if art.exists():
                shutil.rmtree(art)
            edgekit.compress("smollm2", "structured_ffn", {"kind": kind, "param_ratio": ratio}, art,
                             runtimes=["onnxruntime"], input_shape="1x128")
        cmds.append(f"edgekit compress smollm2 --method structured_ffn --set kind={kind} --set param_ratio={ratio} "
                    f"--input-shape 1x128 --target onnxruntime -o {art}")
        log(cmds[-1], round(time.perf_counter() - t0, 1), "s")
        arts.append(art)
    lat = profile_vs_fp32("smollm2", arts, ["host", "intel-cpu-openvino"], args.runs, input_shape="1x128")
    sizes = {str(a): round(sum(f.stat().st_size for f in a.glob("model.onnx*")) / 2**20, 1) for a in arts}
    res = json.loads(OUT.read_text())
    res.setdefault("cli_smollm2", {"rows": {}})["latency"] = {
        "compress_commands": cmds, **lat, "onnx_mib": sizes, "provenance": provenance(threads=THREADS)}
    OUT.write_text(json.dumps(res, indent=1))
    for t in lat["result"]["results"]:
        log(t["runtime"], [(f["artifact"], (f.get("ratio") or {}).get("p50"), (f.get("timing_ms") or {}).get("p50"))
                           for f in t["files"]])


def main() -> None:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["minilm", "smollm2", "latency", "cli", "cli-latency"])
    ap.add_argument("--limit", type=int, default=None, help="test glosses (minilm) / windows per text (smollm2)")
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--train-ratios", type=float, nargs="*", default=[])
    ap.add_argument("--train-kinds", nargs="*", default=list(KINDS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--model", choices=["minilm", "smollm2"], default="minilm", help="latency: which model")
    ap.add_argument("--runtimes", default="onnxruntime,openvino,tflite", help="latency: runtimes to time")
    ap.add_argument("--skip-base", action="store_true", help="only the recovery-training rows")
    ap.add_argument("--base-rows", default="", help="smollm2: only these base rows, e.g. fp32,magnitude "
                                                    "(kinds: lowrank, blockdense, blockshuffle, magnitude, neurons)")
    ap.add_argument("--seq-len", type=int, default=128, help="recovery-training window (tokens)")
    ap.add_argument("--train-text", choices=sorted(TRAIN_TEXTS), default="docstrings",
                    help="SmolLM2 recovery text: 18 modules' docstrings (~130 kB) or the whole stdlib's (~0.8 MB)")
    ap.add_argument("--device", default="cpu", help="recovery-training device: cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads (evaluation)")
    ap.add_argument("--row-suffix", default="", help="appended to recovery row names (e.g. a budget tag)")
    ap.add_argument("--section", default="", help="smollm2: results key (default: smollm2 for --limit 4, else "
                                                  "smollm2_<limit>)")
    ap.add_argument("--work", default="/tmp/edgekit-sffn-cli", help="cli: artifact folder")
    ap.add_argument("--cli-projected", action="store_true", help="cli: also the projection-only rows")
    ap.add_argument("--fresh", action="store_true", help="cli-latency smollm2: re-compress existing artifacts")
    ap.add_argument("--cli-kinds", nargs="*", default=list(KINDS), help="cli: kinds of the projection-only rows "
                    "(also neurons, and magnitude: `--method magnitude --set scope=ffn --set sparsity=1-ratio`)")
    ap.add_argument("--cli-ratios", type=float, nargs="*", default=list(RATIOS), help="cli: their ratios")
    args = ap.parse_args()
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    if args.limit is None:
        args.limit = 200 if args.part == "minilm" or (args.part == "cli" and args.model == "minilm") else 2
    if args.part == "smollm2" and not args.section and args.limit != 4:
        args.section = f"smollm2_{args.limit or 'default'}"
    {"minilm": run_minilm, "smollm2": run_smollm2, "latency": run_latency, "cli": run_cli,
     "cli-latency": run_cli_latency}[args.part](args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
