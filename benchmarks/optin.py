"""OPTIN vs magnitude head/neuron pruning at equal FLOPs: MiniLM WordNet-10 probe, SmolLM2 perplexity, latency.

Parts (one run writes benchmarks/results/optin.json; each part merges its keys into it):
* minilm:  FP32 and OPTIN / magnitude (L2 norm of each unit's weights, same search and slimming) at flops_keep 0.8,
           0.6, 0.5; WordNet-10 probe accuracy (head fitted on FP32 embeddings, 1,000 test glosses, max_len 128)
           and cosine to FP32. Calibration: `samples` WordNet *train* glosses. Scoring wall time (2 threads).
* smollm2: FP32 and OPTIN / magnitude at flops_keep 0.9 and 0.8, perplexity on the first `windows` 512-token
           Python-docs windows (FP32 on the same windows in the same run). Calibration: 128-token windows of the
           Python-docs text *after* the evaluated part. The trajectory scores may come from --scores (an .npz made
           by the same scorer on a GPU, see `device_inputs`), since CPU scoring of 46k units is hours.
* latency: exported FP32 vs slimmed models (batch 1, seq 128 for MiniLM; seq 128 for SmolLM2) on ONNX Runtime
           and OpenVINO, threads=2, runs interleaved, median ratio next to the MAC-model ratio.
* scoring-time: one full MiniLM scoring (defaults, cache off): wall and CPU seconds; CPU seconds bound the wall
           time on 2 dedicated cores even when the box is shared.
* scoring-time-cli: the same scoring through `edgekit compress minilm --method optin --set cache=false` (the
           product's own `scoring_seconds`, and CPU seconds of the call).
* minilm-cli: the minilm rows through the product: `edgekit compress minilm --method optin ... --data glosses.txt`
           artifacts scored by `edgekit eval ART --task wordnet10` (ONNX Runtime file) and timed against FP32 by
           `edgekit profile` (key minilm_cli; every row records its two commands).
* smollm2-windows / smollm2-cli: the SmolLM2 calibration pool as an .npy (here), then the smollm2 rows through
           the product, `device=cuda` for the scoring (benchmarks/on_device.py run optin smollm2-cli ...).
Run:  nice python benchmarks/optin.py minilm-cli [--work DIR] | minilm | smollm2 [--scores raw.npz] | latency | scoring-time | scoring-time-cli
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekit.data import DataSource
from edgekit.eval import evaluate
from edgekit.methods import optin

OUT = Path(__file__).parent / "results" / "optin.json"
KEEP_MINILM = (0.8, 0.6, 0.5)
KEEP_SMOL = (0.9, 0.8)
WN = {"max_len": 128}


def _save(part: str, res: dict) -> None:
    """Merge one part's results into the JSON file."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    from edgekit.profile import provenance

    old[part] = {**res, "provenance": provenance(threads=2)}  # command, commit, versions, CPU/ISA, load
    OUT.write_text(json.dumps(old, indent=1))


def _prune(model: torch.nn.Module, data: DataSource, **kw) -> tuple[torch.nn.Module, dict]:
    m = copy.deepcopy(model)
    m, rep = optin.apply(m, optin.Config(progress=False, **kw), data)
    return m.eval(), rep.extra


def minilm(samples: int = 16) -> dict:
    """WordNet-10 probe accuracy of OPTIN vs magnitude at equal FLOPs."""
    from edgekit.eval.wordnet import Config as WC
    from edgekit.eval.wordnet import load_glosses
    from edgekit.models.real import load_minilm

    model, _ = load_minilm()
    data = DataSource(texts=load_glosses(WC())[0])
    fp = evaluate(model, "wordnet10", options=WN)
    res = {"fp32": fp["metrics"], "samples": samples, "rows": []}
    print(f"MiniLM FP32 probe {fp['metrics']['probe_accuracy']:.3f}")
    for keep in KEEP_MINILM:
        for imp in ("trajectory", "magnitude"):
            m, ex = _prune(model, data, flops_keep=keep, importance=imp, samples=samples)
            r = evaluate(m, "wordnet10", options=WN)["metrics"]
            row = {"flops_keep": keep, "importance": imp, "achieved": ex["flops_keep_achieved"],
                   "probe_accuracy": r["probe_accuracy"], "cosine": r["cosine"],
                   "retrieval_top1": r["retrieval_top1"], "units": ex["units_per_layer"],
                   "neurons": ex["neurons_per_layer"], "scoring_seconds": ex["scoring_seconds_when_computed"]}
            res["rows"].append(row)
            print(f"keep {keep} {imp:10s} achieved {row['achieved']:.3f} probe {row['probe_accuracy']:.3f} "
                  f"(FP32 {fp['metrics']['probe_accuracy']:.3f}) cos {row['cosine']:.3f} heads {row['units']}")
    _save("minilm", res)
    return res


def smol_calibration(model: torch.nn.Module, samples: int) -> tuple[torch.Tensor, torch.Tensor, optin.Config,
                                                                    DataSource]:
    """128-token windows of the Python docs after the 16 evaluated 512-token windows; OPTIN's own draw."""
    from edgekit.eval.perplexity import load_text
    from edgekit.models.real import smollm2_tokenizer

    ids = smollm2_tokenizer()(load_text("python_docs"), add_special_tokens=False)["input_ids"][16 * 512:]
    n = len(ids) // 128
    win = torch.tensor(ids[:n * 128]).view(n, 128)
    cfg = optin.Config(samples=samples, max_len=128, progress=False)
    data = DataSource(tensors=[win])
    a, b = optin.calibration(model, None, data, cfg)
    return a, b, cfg, data


def device_inputs(samples: int, folder: Path) -> None:
    """Write the calibration ids the GPU scorer needs (ids.npy) into `folder`."""
    from edgekit.models.real import load_smollm2

    model, _ = load_smollm2()
    ids = smol_calibration(model, samples)[0]
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "ids.npy", ids.numpy())


def smollm2(samples: int = 8, windows: int = 4, scores: str | None = None) -> dict:
    """Perplexity of OPTIN vs magnitude at flops_keep 0.9 / 0.8 (same windows, FP32 in the same run)."""
    from edgekit.models.real import load_smollm2

    model, _ = load_smollm2()
    ids, mask, cfg, data = smol_calibration(model, samples)
    from edgekit.models.real import cache_dir

    path = cache_dir() / "optin" / f"{optin.cache_key(model, ids, mask, cfg)}.npz"
    if scores:  # GPU-made raw scores for exactly these tokens: put them where optin's cache looks
        with np.load(scores) as z:
            raw = {k: [torch.from_numpy(z[f"{k}_{l}"]) for l in range(30)]
                   for k in ("head_md", "head_kd", "neuron_md", "neuron_kd")}
            optin.save_raw(path, raw, float(z["seconds"]))
    if not path.is_file():
        raise SystemExit("no SmolLM2 scores for these tokens: CPU scoring takes hours; make them on a GPU "
                         "(device-inputs, then the scorer) and pass --scores raw.npz")
    opts = {"python_docs_windows": windows, "gpl3_windows": 0}
    fp = evaluate(model, "perplexity", options=opts)["metrics"]
    res = {"fp32_perplexity": fp["perplexity_python_docs"], "windows": windows, "samples": samples, "rows": []}
    print(f"SmolLM2 FP32 ppl {res['fp32_perplexity']:.2f} ({windows} windows)")
    for keep in KEEP_SMOL:
        for imp in ("trajectory", "magnitude"):
            m, ex = _prune(model, data, flops_keep=keep, importance=imp, samples=samples, max_len=128)
            r = evaluate(m, "perplexity", options=opts)["metrics"]
            row = {"flops_keep": keep, "importance": imp, "achieved": ex["flops_keep_achieved"],
                   "perplexity": r["perplexity_python_docs"], "agreement": r["agreement_python_docs"],
                   "units": ex["units_per_layer"], "neurons": ex["neurons_per_layer"],
                   "scoring_seconds": ex["scoring_seconds_when_computed"], "cache_hit": ex["cache_hit"]}
            res["rows"].append(row)
            print(f"keep {keep} {imp:10s} achieved {row['achieved']:.3f} ppl {row['perplexity']:.2f} "
                  f"agree {row['agreement']:.3f}")
    _save("smollm2", res)
    return res


def _time_pair(paths: dict[str, Path], runtime: str, feeds: dict, reps: int) -> dict[str, float]:
    """Median latency (ms) of each file, timed in one interleaved loop in a worker process (edgekit.profile.
    interleaved) so load changes hit all alike; `paths` starts with the FP32 reference."""
    from edgekit.profile import interleaved

    res = interleaved([{"path": p, "runtime": runtime, "threads": 2, "label": k} for k, p in paths.items()],
                      rounds=reps, warmup=3, feeds=feeds, with_provenance=False)
    if res["status"] != "ok":
        raise RuntimeError(f"interleaved timing on {runtime} failed: {res['error']}")
    return {f["label"]: f["timing_ms"]["p50"] for f in res["files"]}


def latency(reps: int = 30) -> dict:
    """FP32 vs OPTIN-slimmed exports, ONNX Runtime and OpenVINO, 2 threads, interleaved."""
    from edgekit.eval.wordnet import Config as WC
    from edgekit.eval.wordnet import load_glosses
    from edgekit.export.onnx import to_onnx
    from edgekit.export.openvino import convert
    from edgekit.model_io import InputSpec
    from edgekit.models.real import CausalLMLogits, load_minilm, load_smollm2

    # The "Evaluation failed: cannot reshape array of size 1 into shape (1,128)" line of earlier runs is a warning of
    # onnxscript's constant folder (torch.onnx dynamo export), not an error of this script: the ONNX reference
    # GatherElements cannot fold the token_type_ids gather of transformers' BERT embeddings, so that node is just
    # kept (onnxslim folds it afterwards). It appears for the unpruned FP32 MiniLM too; the exports are correct.
    logging.getLogger("onnxscript.optimizer._constant_folding").setLevel(logging.ERROR)
    res: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="optin-lat-"))
    mini, _ = load_minilm()
    smol, _ = load_smollm2()
    sdata = smol_calibration(smol, 8)[3]
    cases = [("minilm", mini, DataSource(texts=load_glosses(WC())[0]), KEEP_MINILM, {"samples": 16},
              [InputSpec("input_ids", [1, 128], "int64", high=30000), InputSpec("attention_mask", [1, 128], "int64")]),
             ("smollm2", smol, sdata, KEEP_SMOL, {"samples": 8, "max_len": 128},
              [InputSpec("input_ids", [1, 128], "int64", high=49152)])]
    for name, model, data, keeps, kw, specs in cases:
        gen = torch.Generator().manual_seed(0)
        inputs = tuple(torch.randint(0, s.high or 2, s.shape, generator=gen) if s.name == "input_ids"
                       else torch.ones(s.shape, dtype=torch.long) for s in specs)
        feeds = {s.name: t.numpy() for s, t in zip(specs, inputs)}
        wrap = (lambda m: CausalLMLogits(m).eval()) if name == "smollm2" else (lambda m: m)
        paths = {"fp32": tmp / f"{name}-fp32.onnx"}
        to_onnx(wrap(model), inputs, specs, paths["fp32"])
        macs = {}
        for keep in keeps:
            m, ex = _prune(model, data, flops_keep=keep, **kw)
            paths[f"keep{keep}"] = tmp / f"{name}-{keep}.onnx"
            to_onnx(wrap(m), inputs, specs, paths[f"keep{keep}"])
            macs[f"keep{keep}"] = ex["flops_keep_achieved"]
        out = {}
        for rt in ("onnxruntime", "openvino"):
            p = paths if rt == "onnxruntime" else {k: convert(v, tmp / f"ov-{name}-{k}") for k, v in paths.items()}
            ms = _time_pair(p, rt, feeds, reps)
            out[rt] = {"ms": ms, "latency_ratio": {k: ms[k] / ms["fp32"] for k in ms if k != "fp32"}}
            for k, mac in macs.items():
                print(f"{name} {rt:11s} {k}: {ms[k]:.2f} ms vs FP32 {ms['fp32']:.2f} ms -> latency ratio "
                      f"{ms[k] / ms['fp32']:.3f}, prunable-MAC ratio {mac:.3f}")
        out["mac_ratio"] = macs
        out["onnx_mb"] = {k: p.stat().st_size / 2**20 for k, p in paths.items()}
        res[name] = out
    _save("latency", res)
    return res


def scoring_time(keep: float = 0.6) -> dict:
    """Full MiniLM scoring with the default settings and the ranking cache off: wall and CPU seconds (2 threads).

    CPU seconds (user + system of this process) bound the wall time on 2 dedicated cores from above, whatever else
    shares the machine: a measurement on a loaded box still answers "does it fit in 10 minutes on 2 cores"."""
    import resource

    from edgekit.eval.wordnet import Config as WC
    from edgekit.eval.wordnet import load_glosses
    from edgekit.models.real import load_minilm

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    model, _ = load_minilm()
    data = DataSource(texts=load_glosses(WC())[0])
    c0, t0 = cpu(), time.perf_counter()
    m, rep = optin.apply(copy.deepcopy(model), optin.Config(flops_keep=keep, cache=False, progress=False), data)
    res = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu() - c0, 1), "threads": 2,
           "flops_keep": keep, "achieved": rep.extra["flops_keep_achieved"],
           "load_average": open("/proc/loadavg").read().split()[:3],
           "probe": evaluate(m, "wordnet10", options=WN)["metrics"]["probe_accuracy"]}
    print(res)
    _save("scoring_time", res)
    return res


def scoring_time_cli(work: Path, keep: float = 0.6) -> dict:
    """The scoring cost through the product (key scoring_time_cli): `edgekit compress minilm --method optin --set
    flops_keep=0.6 --set cache=false --data glosses.txt` (default samples, the ranking cache off, so every head and
    neuron is scored), then `edgekit eval ART --task wordnet10`. Figures: the compress report's `scoring_seconds`
    (wall time of the scoring inside the product), the compress call's wall time, and this process's CPU seconds
    over the compress (user + system; they bound the wall time on 2 dedicated cores from above whatever else shares
    the box)."""
    import resource

    from edgekit.eval.wordnet import Config as WC
    from edgekit.eval.wordnet import load_glosses
    from _product import run_row

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    work.mkdir(parents=True, exist_ok=True)
    calib = work / "wordnet_train_glosses.txt"
    calib.write_text("\n\n".join(load_glosses(WC())[0]), encoding="utf-8")
    load = open("/proc/loadavg").read().split()[:3]
    c0 = cpu()
    row = run_row("minilm", "optin", {"flops_keep": keep, "cache": False}, work / f"optin-nocache-{keep}",
                  data=calib, task="wordnet10")
    # run_row = compress then eval; the eval's CPU is counted too, so cpu_s bounds the compress's from above
    res = {"row": row, "cpu_s_compress_and_eval": round(cpu() - c0, 1), "threads": 2, "load_average_before": load,
           "load_average_after": open("/proc/loadavg").read().split()[:3],
           "scoring_seconds": row.get("report_extra", {}).get("scoring_seconds"),
           "cache_hit": row.get("report_extra", {}).get("cache_hit")}
    print({k: v for k, v in res.items() if k != "row"}, row.get("metrics"), flush=True)
    _save("scoring_time_cli", res)
    return res


def minilm_cli(work: Path, samples: int = 16, keeps: tuple[float, ...] = KEEP_MINILM, rounds: int = 30) -> dict:
    """The MiniLM rows through the product (key minilm_cli): per budget and importance one `edgekit compress minilm
    --method optin` artifact (calibration: the WordNet-10 *train* glosses as a text file, one gloss per paragraph, so
    the draw and the cached rankings equal the `minilm` part's), scored by `edgekit eval ART --task wordnet10` on its
    ONNX Runtime file (1,000 test glosses); then `edgekit profile minilm ART...` times FP32 and the trajectory
    artifacts interleaved on ONNX Runtime and OpenVINO (2 threads)."""
    import edgekit
    from edgekit.eval.wordnet import Config as WC
    from edgekit.eval.wordnet import load_glosses
    from _product import run_row

    work.mkdir(parents=True, exist_ok=True)
    calib = work / "wordnet_train_glosses.txt"
    calib.write_text("\n\n".join(load_glosses(WC())[0]), encoding="utf-8")
    fp = edgekit.evaluate("minilm", "wordnet10", threads=2)
    res: dict = {"fp32": fp["metrics"], "fp32_command": "edgekit eval minilm --task wordnet10",
                 "samples": samples, "calibration": str(calib), "rows": []}
    print(f"MiniLM FP32 probe {fp['metrics']['probe_accuracy']:.3f}", flush=True)
    arts = {}
    for keep in keeps:
        for imp in ("trajectory", "magnitude"):
            art = work / f"optin-{imp}-{keep}"
            row = run_row("minilm", "optin", {"flops_keep": keep, "importance": imp, "samples": samples}, art,
                          data=calib, targets=("onnxruntime", "openvino"), task="wordnet10")
            row.update(flops_keep=keep, importance=imp)
            res["rows"].append(row)
            if "error" not in row and imp == "trajectory":
                arts[keep] = art
            m = row.get("metrics", {})
            print(f"keep {keep} {imp:10s} probe {m.get('probe_accuracy', float('nan')):.3f} cos "
                  f"{m.get('cosine', float('nan')):.3f} {row.get('error', '')}", flush=True)
            _save("minilm_cli", res)
    if arts:
        res["latency"] = minilm_cli_latency(list(arts.values()), rounds)
        _save("minilm_cli", res)
    return res


def minilm_cli_latency(arts: list[Path], rounds: int = 30) -> dict:
    """`edgekit profile minilm ART... --target host --target intel-cpu-openvino --rounds N`: FP32 (exported by the
    profile itself) and the artifacts, interleaved, ratios to FP32."""
    from _product import profile_vs_fp32

    return profile_vs_fp32("minilm", arts, ["host", "intel-cpu-openvino"], rounds)


def smollm2_windows(path: Path) -> None:
    """Write the SmolLM2 calibration pool as token ids (n x 128 .npy): the Python docs after the 16 evaluated
    512-token windows, the `smollm2` part's pool (its draw of `samples` rows is OPTIN's own, seeded)."""
    from edgekit.eval.perplexity import load_text
    from edgekit.models.real import smollm2_tokenizer

    ids = smollm2_tokenizer()(load_text("python_docs"), add_special_tokens=False)["input_ids"][16 * 512:]
    n = len(ids) // 128
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(ids[:n * 128], dtype=np.int64).reshape(n, 128))


def smollm2_cli(windows: Path, work: Path, keeps: tuple[float, ...] = (0.9,), samples: int = 8,
                device: str = "cpu") -> dict:
    """SmolLM2 rows through the product (key smollm2_cli): `edgekit compress smollm2 --method optin --set
    flops_keep=K --set samples=8 --set max_len=128 --data windows.npy --input-shape 1x512`, then `edgekit eval ART
    --task perplexity` on its ONNX Runtime file (16 + 8 windows of 512 tokens)."""
    from _product import run_row

    from edgekit.profile import provenance

    old = json.loads(OUT.read_text()).get("smollm2_cli", {}) if OUT.is_file() else {}
    res: dict = {"rows": [r for r in old.get("rows", []) if r["flops_keep"] not in keeps],  # earlier keeps stay
                 "calibration": f"{windows.name}: 128-token windows of the Python docs after the evaluated 16 x 512",
                 "samples": samples}
    for keep in keeps:
        opts = {"flops_keep": keep, "samples": samples, "max_len": 128, **({"device": device} if device != "cpu"
                                                                           else {})}
        row = run_row("smollm2", "optin", opts, work / f"optin-smol-{keep}", data=windows, task="perplexity",
                      input_shape="1x512", threads=os.cpu_count() or 2)
        row["flops_keep"] = keep
        row["provenance"] = provenance(threads=os.cpu_count() or 2)  # per row: keeps come from different runs
        res["rows"] = sorted([*res["rows"], row], key=lambda r: -r["flops_keep"])
        print(keep, {k: v for k, v in row.items() if k not in ("options", "commands", "report_extra")}, flush=True)
        _save("smollm2_cli", res)
        shutil.rmtree(work / f"optin-smol-{keep}", ignore_errors=True)
    return res


def main() -> None:
    torch.set_num_threads(2)
    part = sys.argv[1] if len(sys.argv) > 1 else "minilm"
    if part in ("-h", "--help"):
        raise SystemExit(print(__doc__))
    args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    if part == "minilm":
        minilm(int(args.get("--samples", 16)))
    elif part == "smollm2":
        smollm2(int(args.get("--samples", 8)), int(args.get("--windows", 4)), args.get("--scores"))
    elif part == "smollm2-windows":
        smollm2_windows(Path(args["--to"]))
    elif part == "smollm2-cli":
        smollm2_cli(Path(args["--windows"]), Path(args.get("--work", "/tmp/optin-cli")),
                    tuple(float(k) for k in args.get("--keeps", "0.9").split(",")), int(args.get("--samples", 8)),
                    args.get("--device", "cpu"))
    elif part == "device-inputs":
        device_inputs(int(args.get("--samples", 8)), Path(args["--to"]))
    elif part == "latency":
        latency(int(args.get("--reps", 30)))
    elif part == "minilm-cli":
        minilm_cli(Path(args.get("--work", "/tmp/optin-cli")), int(args.get("--samples", 16)),
                   rounds=int(args.get("--rounds", 30)))
    elif part == "minilm-cli-latency":  # the artifacts of an earlier minilm-cli run
        old = json.loads(OUT.read_text())["minilm_cli"]
        from _product import artifact_of

        arts = [artifact_of(r) for r in old["rows"] if r["importance"] == "trajectory" and "error" not in r]
        old["rows_provenance"] = old.get("rows_provenance") or old.get("provenance")  # the run that made the rows
        old["latency"] = minilm_cli_latency(arts, int(args.get("--rounds", 30)))
        _save("minilm_cli", {k: v for k, v in old.items() if k != "provenance"})
    elif part == "scoring-time":
        scoring_time()
    elif part == "scoring-time-cli":
        scoring_time_cli(Path(args.get("--work", "/tmp/optin-cli")))
    else:
        raise SystemExit(f"unknown part {part}; use minilm, minilm-cli, smollm2, smollm2-windows, smollm2-cli, "
                         "device-inputs, latency or scoring-time")


if __name__ == "__main__":
    main()
