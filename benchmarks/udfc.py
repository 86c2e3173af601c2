"""UDFC benchmark (issues 5, 21): data-free quantization and pruning vs RTN on EfficientNet-Lite0 and code-built nets.

Every row goes through the product (edgekit.api / `edgekit compress` + `edgekit eval`). Parts (JSON merged into
benchmarks/results/udfc.json; `deploy` prints a table):
* deploy  (CPU) exports FP32 and pruned UDFC variants through edgekit.api (ONNX Runtime, OpenVINO, LiteRT), sizes and
          latency ratios vs FP32 (2 threads, batch 1, interleaved loop, medians).
* zoo_cli  networks built here and trained briefly on Fashion-MNIST (MobileNetV2-style: ReLU6, inverted residuals,
          depthwise, linear bottlenecks; EfficientNet-B-style: SiLU + squeeze-excite; VGG-style plain; weights in
          benchmarks/weights/udfc_zoo_*.safetensors, trained on first use) and the Fashion ResNet-20: W6/W4 rows of
          RTN, default udfc, the pre-issue-21 defaults (udfc_v1) and the paper's method, each an `edgekit compress`
          of the weights file + `edgekit eval ART --task npz` on the first --zoo-images test images with their
          labels (benchmarks/_product.run_row; each row records both commands).
* zoo_lite0_cli  the same W8/W6/W4 quantization rows for EfficientNet-Lite0's ImageNet logits on Fashion images
          (`edgekit compress efficientnet-lite0` + `edgekit eval ART --task npz` on the upsampled images, saved
          without labels).
* zoo_more_cli  the rest through the product: for the four Fashion networks W8 quantization rows, pruning at
          r=0.3 (W8; udfc, prune_linear, udfc_v1, one-hot NM, drop-only) and sparse-checkpoint rows at W8/W6 (30%
          exact-zero weights, BN re-estimated, saved as a state dict file, compressed with `--arch` and scored
          against itself); for EfficientNet-Lite0 the udfc / prune_linear pruning rows and a W6 sparse checkpoint
          (`--nets` picks networks).

    python benchmarks/udfc.py --part zoo_cli
    python benchmarks/udfc.py --part zoo_lite0_cli
    python benchmarks/udfc.py --part zoo_more_cli [--nets vgg,efficientnet-lite0]
    nice -n 10 python benchmarks/udfc.py --part deploy
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks.train_fashion_resnet:build` must import as --arch
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.train_fashion_resnet import WEIGHTS, accuracy, build, fashion_npz, load_fashion

RESULTS = ROOT / "benchmarks" / "results" / "udfc.json"
ARCH = "benchmarks.train_fashion_resnet:build"


# ---------------------------------------------------------------- code-built networks (issue 21)
def _cbr(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1, act: str | None = "relu") -> nn.Sequential:
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, None: nn.Identity}
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), acts[act]())


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (act), 3x3 depthwise (act), optional squeeze-excite, 1x1 linear project, add."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: str = "relu6", se: bool = False):
        super().__init__()
        h = cin * expand
        self.expand = _cbr(cin, h, 1, act=act) if expand != 1 else nn.Identity()
        self.dw = _cbr(h, h, 3, stride, g=h, act=act)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(h, max(4, cin // 4), 1), nn.SiLU(),
                                nn.Conv2d(max(4, cin // 4), h, 1), nn.Sigmoid()) if se else None
        self.project = _cbr(h, cout, 1, act=None)
        self.res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.expand(x))
        if self.se is not None:
            y = y * self.se(y)
        y = self.project(y)
        return x + y if self.res else y


class MobileNet(nn.Module):
    """Depthwise-separable net for 1x28x28: MobileNetV2 layout (ReLU6) or EfficientNet-B layout (SiLU + SE)."""

    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 48, 2, 1), (6, 64, 1, 1))  # expand, out, n, stride

    def __init__(self, act: str = "relu6", se: bool = False, classes: int = 10):
        super().__init__()
        self.stem = _cbr(1, 16, 3, 1, act=act)
        blocks, c = [], 16
        for e, o, n, s in self.STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(c, o, s if i == 0 else 1, e, act, se))
                c = o
        self.blocks = nn.Sequential(*blocks)
        self.head = _cbr(c, 256, 1, act=act)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.drop(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


class VGG(nn.Module):
    """Plain conv-BN-ReLU net for 1x28x28: 2+2+2 convs with max pools, flatten (128x3x3) -> FC-ReLU -> FC."""

    def __init__(self, widths: tuple = (32, 32, "M", 64, 64, "M", 128, 128, "M"), classes: int = 10):
        super().__init__()
        layers, c = [], 1
        for v in widths:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(_cbr(c, v, 3))
                c = v
        self.features = nn.Sequential(*layers)
        self.fc1, self.fc2 = nn.Linear(c * 9, 128), nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))


ZOO = {"mobilenetv2": lambda: MobileNet("relu6"), "effnet_silu_se": lambda: MobileNet("silu", se=True),
       "vgg": VGG}
ZOO_WEIGHTS = ROOT / "benchmarks" / "weights"


def zoo_mobilenetv2() -> nn.Module:
    """--arch factory (benchmarks.udfc:zoo_mobilenetv2)."""
    return ZOO["mobilenetv2"]()


def zoo_effnet_silu_se() -> nn.Module:
    """--arch factory (benchmarks.udfc:zoo_effnet_silu_se)."""
    return ZOO["effnet_silu_se"]()


def zoo_vgg() -> nn.Module:
    """--arch factory (benchmarks.udfc:zoo_vgg)."""
    return ZOO["vgg"]()


def train_zoo(name: str, steps: int = 1500, batch: int = 128, lr: float = 0.05, device: str = "cpu",
              seed: int = 0) -> tuple[nn.Module, dict]:
    """Short SGD one-cycle run on Fashion-MNIST (flip + 2-px shift), like train_fashion_resnet; model on CPU, eval."""
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xtr, ytr = load_fashion("train")
    m = ZOO[name]().to(device)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    m.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (batch,), generator=g)
        xb, yb = xtr[idx], ytr[idx]
        flip = torch.rand(len(xb), generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        xb = torch.roll(xb, (dy, dx), (2, 3))
        loss = F.cross_entropy(m(xb.to(device)), yb.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    m = m.cpu().eval()
    xte, yte = load_fashion("test")
    rec = {"arch": f"benchmarks.udfc:zoo_{name}", "test_accuracy": accuracy(m, xte, yte), "steps": steps,
           "batch": batch, "lr": lr, "seed": seed, "device": device,
           "train_seconds": round(time.perf_counter() - t0, 1), "params": sum(p.numel() for p in m.parameters())}
    return m, rec


def load_zoo(name: str, device: str = "cpu", train_steps: int = 1500) -> tuple[nn.Module, dict]:
    """Trained zoo network from benchmarks/weights/udfc_zoo_<name>.safetensors, training (and saving) it if absent."""
    from safetensors.torch import load_file, save_file

    path = ZOO_WEIGHTS / f"udfc_zoo_{name}.safetensors"
    if not path.is_file():
        m, rec = train_zoo(name, train_steps, device=device)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps(rec, indent=2) + "\n")
    m = ZOO[name]()
    m.load_state_dict(load_file(str(path)))
    return m.eval(), json.loads(path.with_suffix(".json").read_text())


def load_resnet() -> nn.Module:
    """The trained Fashion ResNet (FP32, eval)."""
    from safetensors.torch import load_file

    m = build()
    m.load_state_dict(load_file(str(WEIGHTS)))
    return m.eval()


# ---------------------------------------------------------------- zoo parts, through the product
V1 = {"per_channel": True, "grid": "midrise", "gain": True, "bias_correction": False, "prune_linear": True}  # before issue 21


def sparsify(model: nn.Module, frac: float = 0.3, recal: torch.Tensor | None = None, dev: str = "cpu") -> nn.Module:
    """A sparse checkpoint: the `frac` smallest |w| of each output channel of every conv/linear with more than 9
    weights per channel set to exactly 0; BN statistics re-estimated on `recal` images when given."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight[0].numel() > 9:
                w = mod.weight
                thr = w.abs().flatten(1).kthvalue(max(1, int(frac * w[0].numel())), dim=1).values
                w[w.abs() <= thr.view(-1, *[1] * (w.dim() - 1))] = 0
        if recal is not None:
            for b in m.modules():
                if isinstance(b, nn.BatchNorm2d):
                    b.reset_running_stats()
                    b.momentum = None  # cumulative average
            m.to(dev).train()
            for i in range(0, len(recal), 500):
                m(recal[i:i + 500].to(dev))
    return m.cpu().eval()


ZOO_CLI_ARCH = {"mobilenetv2": "benchmarks.udfc:zoo_mobilenetv2", "effnet_silu_se": "benchmarks.udfc:zoo_effnet_silu_se",
                "vgg": "benchmarks.udfc:zoo_vgg", "resnet20": "benchmarks.train_fashion_resnet:build"}


def part_zoo_cli(n_images: int, threads: int, bits_list: tuple[int, ...] = (6, 4)) -> dict:
    """The Fashion networks' quantization rows through the product: per net, bit width and variant, `edgekit compress
    WEIGHTS --arch FACTORY --method rtn|udfc --set bits=B [...]` and `edgekit eval ART --task npz --data
    fashion_test1000.npz` (the first n_images test images with their labels: top-1 agreement and logit cosine with
    the FP32 source, and accuracy), on ONNX Runtime. Rows: net, kind, variant, bits, agree, cos, acc, fp32_acc
    plus the run_row record."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _product import run_row

    work = Path(tempfile.mkdtemp(prefix="udfc_zoo_cli_"))
    test = fashion_npz("test", work / f"fashion_test{n_images}.npz", n_images)
    variants = {"rtn": ("rtn", {}), "udfc": ("udfc", {}), "udfc_v1": ("udfc", V1),
                "udfc_paper": ("udfc", {"paper": True})}
    rows = []
    for net, arch in ZOO_CLI_ARCH.items():
        src = (WEIGHTS if net == "resnet20" else ZOO_WEIGHTS / f"udfc_zoo_{net}.safetensors").relative_to(ROOT)
        for bits in bits_list:
            for v, (method, o) in variants.items():
                rec = run_row(str(src), method, {**o, "bits": bits}, work / f"{net}_{v}_w{bits}", task="npz",
                              eval_data=test, threads=threads, input_shape="1x1x28x28", arch=arch)
                m = rec.get("metrics", {})
                rows.append({"net": net, "kind": "quant", "variant": v, "bits": bits, "agree": m.get("top1_agreement"),
                             "cos": m.get("cosine"), "acc": m.get("accuracy"), "fp32_acc":
                             (rec.get("reference") or {}).get("accuracy"), "product": rec})
                print(f"  {net:16s} {v:10s} W{bits} agree {m.get('top1_agreement')} cos {m.get('cosine')}"
                      + (f" ERROR {rec['error']}" if "error" in rec else ""), flush=True)
    return {"images": n_images, "rows": rows, "data_file": f"fashion_test{n_images}.npz (normalised, input + labels)"}


def lite0_npz(xte: torch.Tensor, path: Path, px: int) -> Path:
    """Normalised Fashion images as EfficientNet-Lite0's `--data` file: upsampled to px, grey -> RGB, in [-1, 1]."""
    import numpy as np

    x = torch.nn.functional.interpolate((xte * 0.3530 + 0.2860 - 0.5) * 2, size=(px, px), mode="bilinear")
    np.savez(path, input=x.repeat(1, 3, 1, 1).numpy().astype(np.float32))
    return path


def part_zoo_lite0_cli(n_images: int, threads: int, px: int = 224, bits_list: tuple[int, ...] = (8, 6, 4)) -> dict:
    """EfficientNet-Lite0's quantization rows through the product: `edgekit compress efficientnet-lite0 --method
    rtn|udfc --set bits=B [...]` and `edgekit eval ART --task npz --data fashion{px}_test{n}.npz` (Fashion test images
    upsampled to px, grey -> RGB, in [-1, 1]; no labels: ImageNet logits), top-1 agreement and logit cosine with the
    FP32 source, on ONNX Runtime."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _product import run_row

    work = Path(tempfile.mkdtemp(prefix="udfc_lite0_cli_"))
    test = lite0_npz(load_fashion("test")[0][:n_images], work / f"fashion{px}_test{n_images}.npz", px)
    variants = {"rtn": ("rtn", {}), "udfc": ("udfc", {}), "udfc_v1": ("udfc", V1),
                "udfc_paper": ("udfc", {"paper": True})}
    rows = []
    for bits in bits_list:
        for v, (method, o) in variants.items():
            rec = run_row("efficientnet-lite0", method, {**o, "bits": bits}, work / f"lite0_{v}_w{bits}", task="npz",
                          eval_data=test, threads=threads)
            m = rec.get("metrics", {})
            rows.append({"net": "efficientnet-lite0", "kind": "quant", "variant": v, "bits": bits,
                         "agree": m.get("top1_agreement"), "cos": m.get("cosine"), "product": rec})
            print(f"  lite0 {v:10s} W{bits} agree {m.get('top1_agreement')} cos {m.get('cosine')}"
                  + (f" ERROR {rec['error']}" if "error" in rec else ""), flush=True)
    return {"images": n_images, "px": px, "rows": rows,
            "data_file": f"{test.name} (Fashion test images, {px} px, grey -> RGB, [-1, 1]; no labels)"}


ZOO_MORE_QUANT = {"rtn": ("rtn", {}), "udfc": ("udfc", {}), "udfc_v1": ("udfc", V1), "udfc_paper": ("udfc", {"paper": True})}
ZOO_MORE_PRUNE = {"udfc": {}, "udfc_linear": {"prune_linear": True}, "udfc_v1": V1, "nm": {"compensation": "nm"},
                  "drop": {"compensation": "none"}}
LITE0_ARCH, LITE0_ARGS = "benchmarks/own_model/effnet.py:build", {"num_classes": 1000}


def _save_sparse(model: nn.Module, path: Path) -> Path:
    """A sparse checkpoint as the user's state dict file (the model the product is then given)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def part_zoo_more_cli(n_images: int, threads: int, px: int = 224, nets: tuple[str, ...] | None = None) -> dict:
    """The remaining rows through the product (what the README's prose and sparse row quote): per
    network, W8 quantization (rtn, udfc, udfc_v1, udfc_paper; W6/W4 are `zoo_cli`), pruning at ratio=0.3 and W8
    (udfc, prune_linear, udfc_v1, one-hot NM, drop-only), and a sparse checkpoint (30% of each output channel's
    smallest weights set to exactly 0 by `sparsify`, BatchNorm re-estimated on test images 5,000-9,999 for the
    Fashion nets; Lite0 as is) saved as a state dict file, then `edgekit compress SPARSE.safetensors --arch FACTORY
    --method rtn|udfc --set bits=6|8` + `edgekit eval ART --task npz`, scored against that sparse checkpoint (its
    own FP32 source). Each row records its two commands; the sparse files are inputs made by this script, as the
    trained Fashion weights are."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _product import run_row
    from edgekit.models.real import load_efficientnet_lite0

    work = Path(tempfile.mkdtemp(prefix="udfc_zoo_more_cli_"))
    xte, _ = load_fashion("test")
    recal = xte[5000:10000]
    test28 = fashion_npz("test", work / f"fashion_test{n_images}.npz", n_images)
    test224 = lite0_npz(xte[:n_images], work / f"fashion{px}_test{n_images}.npz", px)
    rows = []

    def one(net: str, kind: str, variant: str, bits: int, src: str, method: str, o: dict, **kw) -> None:
        rec = run_row(src, method, {**o, "bits": bits}, work / f"{net}_{kind}_{variant}_w{bits}", task="npz",
                      threads=threads, **kw)
        m = rec.get("metrics", {})
        rows.append({"net": net, "kind": kind, "variant": variant, "bits": bits, "ratio": o.get("ratio", 0.0),
                     "agree": m.get("top1_agreement"), "cos": m.get("cosine"), "acc": m.get("accuracy"),
                     "macs_ratio": rec.get("macs_ratio"), "product": rec})
        print(f"  {net:18s} {kind:8s} {variant:12s} W{bits} agree {m.get('top1_agreement')} cos {m.get('cosine')}"
              + (f" ERROR {rec['error']}" if "error" in rec else ""), flush=True)

    for net, arch in ZOO_CLI_ARCH.items():
        if nets and net not in nets:
            continue
        src_path = WEIGHTS if net == "resnet20" else ZOO_WEIGHTS / f"udfc_zoo_{net}.safetensors"
        kw = {"eval_data": test28, "input_shape": "1x1x28x28", "arch": arch}
        src = str(src_path.relative_to(ROOT))
        for v, (method, o) in ZOO_MORE_QUANT.items():
            one(net, "quant", v, 8, src, method, o, **kw)
        for v, o in ZOO_MORE_PRUNE.items():
            one(net, "prune", v, 8, src, "udfc", {**o, "ratio": 0.3}, **kw)
        base = load_resnet() if net == "resnet20" else load_zoo(net)[0]
        sp = _save_sparse(sparsify(base.eval(), 0.3, recal), work / f"{net}_sparse30.safetensors")
        for bits in (8, 6):
            for v in ("rtn", "udfc", "udfc_v1"):
                one(net, "sparse30", v, bits, str(sp), *ZOO_MORE_QUANT[v], **kw)
    if not nets or "efficientnet-lite0" in nets:
        kw = {"eval_data": test224}
        for v, o in ZOO_MORE_PRUNE.items():
            if v in ("udfc", "udfc_linear"):
                one("efficientnet-lite0", "prune", v, 8, "efficientnet-lite0", "udfc", {**o, "ratio": 0.3}, **kw)
        sp = _save_sparse(sparsify(load_efficientnet_lite0(), 0.3, None), work / "lite0_sparse30.safetensors")
        for v in ("rtn", "udfc", "udfc_v1"):
            one("efficientnet-lite0", "sparse30", v, 6, str(sp), *ZOO_MORE_QUANT[v], eval_data=test224,
                input_shape=f"1x3x{px}x{px}", arch=LITE0_ARCH, arch_args=LITE0_ARGS)
    return {"images": n_images, "px": px, "rows": rows,
            "data_files": {"fashion": test28.name + " (normalised, input + labels)",
                           "lite0": f"{test224.name} (Fashion test images, {px} px, grey -> RGB, [-1, 1]; no labels)"}}


def _dir_mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file() and p.suffix in (".onnx", ".bin", ".xml", ".tflite")) / 1e6


def part_deploy(runs: int) -> dict:
    """Export FP32 and pruned UDFC variants; file sizes and interleaved latency ratios on ORT and OpenVINO."""
    from edgekit import api
    from edgekit.artifact import export_file, read_manifest
    from edgekit.profile import interleaved

    tmp = Path(tempfile.mkdtemp(prefix="udfc_bench_"))
    t0 = time.perf_counter()
    arts = {"fp32": api.export(WEIGHTS, "onnxruntime", tmp / "fp32", input_shape="1x1x28x28", arch=ARCH)}
    api.export(arts["fp32"], "openvino")
    api.export(arts["fp32"], "tflite")
    meta = {"fp32": {"export_s": round(time.perf_counter() - t0, 1)}}
    for ratio in (0.3, 0.5):
        for bits in (6, 4):
            for rt in (8, 1):
                name = f"udfc_r{ratio}_w{bits}_round{rt}"
                t0 = time.perf_counter()
                arts[name] = api.compress(WEIGHTS, "udfc", {"ratio": ratio, "bits": bits, "round_to": rt},
                                          tmp / name, input_shape="1x1x28x28", arch=ARCH,
                                          runtimes=["onnxruntime", "openvino", "tflite"], overwrite=True)
                rep = read_manifest(arts[name])["method"]["report"]
                meta[name] = {"ratio": ratio, "bits": bits, "round_to": rt, "macs_ratio": rep["macs_after"] / rep["macs_before"],
                              "method_seconds": rep["seconds"], "pruned": rep["extra"]["pruned"],
                              "compress_total_s": round(time.perf_counter() - t0, 1)}
                print(f"  exported {name} ({meta[name]['compress_total_s']} s)", flush=True)
    x = load_fashion("test")[0][:1].numpy()
    out: dict = {}
    for runtime in ("onnxruntime", "openvino", "tflite"):  # interleaved: every variant sees the same machine load
        r = interleaved([{"path": export_file(a, runtime), "runtime": runtime, "threads": 2, "label": n}
                         for n, a in arts.items()], rounds=runs, warmup=20, feeds=[x], with_provenance=False)
        if r["status"] != "ok":
            raise RuntimeError(f"interleaved timing on {runtime} failed: {r['error']}")
        med = {f["label"]: f["timing_ms"]["p50"] / 1e3 for f in r["files"]}
        fp_mb = _dir_mb(export_file(arts["fp32"], runtime).parent)
        out[runtime] = {n: {"median_ms": round(med[n] * 1e3, 4), "latency_ratio": round(med[n] / med["fp32"], 3),
                            "file_mb": round(_dir_mb(export_file(a, runtime).parent), 4),
                            "size_ratio": round(_dir_mb(export_file(a, runtime).parent) / fp_mb, 3)}
                        for n, a in arts.items()}
    return {"runs": runs, "threads": 2, "batch": 1, "variants": meta, "runtimes": out, "artifacts_dir": str(tmp)}


PARTS = ("deploy", "zoo_cli", "zoo_lite0_cli", "zoo_more_cli")


def table(res: dict) -> None:
    """Print the deploy table (the zoo parts print their rows as they run)."""
    if "deploy" in res:
        d = res["deploy"]
        print(f"\nPruned UDFC exports vs FP32 (batch 1, 2 threads, median of {d['runs']})")
        rts = [r for r in ("onnxruntime", "openvino", "tflite") if r in d["runtimes"]]
        print(f"{'variant':24s} {'MACs':>5s} " + " ".join(f"{r[:8] + ' lat':>13s}" for r in rts)
              + " " + " ".join(f"{r[:8] + ' size':>13s}" for r in rts))
        for n in d["runtimes"]["onnxruntime"]:
            mr = d["variants"][n].get("macs_ratio", 1.0)
            print(f"{n:24s} {mr:5.2f} " + " ".join(f"{d['runtimes'][r][n]['latency_ratio']:13.3f}" for r in rts)
                  + " " + " ".join(f"{d['runtimes'][r][n]['size_ratio']:13.3f}" for r in rts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="deploy", help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--px", type=int, default=224, help="zoo_lite0_cli / zoo_more_cli: Lite0 input size")
    ap.add_argument("--runs", type=int, default=300, help="deploy: interleaved timing rounds")
    ap.add_argument("--zoo-images", type=int, default=1000, help="held-out test images per network")
    ap.add_argument("--nets", default=None, help="zoo_more_cli: only these networks (comma-separated)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    parts = a.part.split(",")
    if unknown := [p for p in parts if p not in PARTS]:
        ap.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    torch.set_num_threads(a.threads)
    res = json.loads(a.out.read_text()) if a.out.is_file() else {}
    t0 = time.perf_counter()
    if "deploy" in parts:
        res["deploy"] = part_deploy(a.runs)
    if "zoo_cli" in parts:
        res["zoo_cli"] = part_zoo_cli(a.zoo_images, a.threads)
    if "zoo_more_cli" in parts:
        res["zoo_more_cli"] = part_zoo_more_cli(a.zoo_images, a.threads, a.px,
                                                tuple(a.nets.split(",")) if a.nets else None)
    if "zoo_lite0_cli" in parts:
        res["zoo_lite0_cli"] = part_zoo_lite0_cli(a.zoo_images, a.threads, a.px)
    res.setdefault("wall_seconds", {})[a.part] = round(time.perf_counter() - t0, 1)
    from edgekit.profile import provenance

    res.setdefault("provenance", {})[a.part] = provenance(threads=a.threads)  # command, commit, versions, CPU, load
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    table(res)


if __name__ == "__main__":
    main()
