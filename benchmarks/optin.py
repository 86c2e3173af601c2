"""OPTIN vs magnitude head/neuron pruning at equal FLOPs, through the product: MiniLM WordNet-10 probe, SmolLM2
perplexity, latency, scoring time.

Parts (each merges its key into benchmarks/results/optin.json):
* minilm-cli: FP32 and OPTIN / magnitude (L2 norm of each unit's weights, same search and slimming) at flops_keep
           0.8, 0.6, 0.5: `edgekit compress minilm --method optin ... --data glosses.txt` artifacts (calibration:
           `samples` WordNet *train* glosses) scored by `edgekit eval ART --task wordnet10` (ONNX Runtime file) and
           timed against FP32 by `edgekit profile` (key minilm_cli; every row records its two commands).
* minilm-cli-latency: the `edgekit profile` timing again, on the artifacts of an earlier minilm-cli run.
* scoring-time-cli: one full MiniLM scoring through `edgekit compress minilm --method optin --set cache=false` (the
           product's own `scoring_seconds`, and CPU seconds of the call; CPU seconds bound the wall time on 2
           dedicated cores even when the box is shared).
* smollm2-windows / smollm2-cli: the SmolLM2 calibration pool (128-token windows of the Python docs after the
           evaluated part) as an .npy (here), then SmolLM2 perplexity rows through the product, `device=cuda` for
           the scoring (benchmarks/on_device.py run optin smollm2-cli ...).
Run:  nice python benchmarks/optin.py minilm-cli [--work DIR] | minilm-cli-latency [--rounds N] | scoring-time-cli
      | smollm2-windows --to POOL.npy | smollm2-cli --windows POOL.npy [--keeps 0.9] [--device cuda]
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parent / "results" / "optin.json"
KEEP_MINILM = (0.8, 0.6, 0.5)


def _save(part: str, res: dict) -> None:
    """Merge one part's results into the JSON file."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    from edgekit.profile import provenance

    old[part] = {**res, "provenance": provenance(threads=2)}  # command, commit, versions, CPU/ISA, load
    OUT.write_text(json.dumps(old, indent=1))


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
    --method optin` artifact (calibration: the WordNet-10 *train* glosses as a text file, one gloss per paragraph;
    OPTIN draws `samples` of them, seeded), scored by `edgekit eval ART --task wordnet10` on its
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
    512-token windows (the draw of `samples` rows from it is OPTIN's own, seeded)."""
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
    part = sys.argv[1] if len(sys.argv) > 1 else "--help"
    if part in ("-h", "--help"):
        raise SystemExit(print(__doc__))
    args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    if part == "smollm2-windows":
        smollm2_windows(Path(args["--to"]))
    elif part == "smollm2-cli":
        smollm2_cli(Path(args["--windows"]), Path(args.get("--work", "/tmp/optin-cli")),
                    tuple(float(k) for k in args.get("--keeps", "0.9").split(",")), int(args.get("--samples", 8)),
                    args.get("--device", "cpu"))
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
    elif part == "scoring-time-cli":
        scoring_time_cli(Path(args.get("--work", "/tmp/optin-cli")))
    else:
        raise SystemExit(f"unknown part {part}; use minilm-cli, minilm-cli-latency, scoring-time-cli, "
                         "smollm2-windows or smollm2-cli")


if __name__ == "__main__":
    main()
