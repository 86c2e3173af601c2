"""Train the small CIFAR-style ResNet (ResNet-20 layout, 28x28 grey input) on full Fashion-MNIST for the UDFC benchmark.

Why: UDFC's pruning claims (UDFC > one-hot NM > drop-only) need a trained conv+BN+ReLU ResNet; none ships offline.
`build()` is the --arch factory (`benchmarks.train_fashion_resnet:build`); weights are saved as safetensors
(~1.1 MB) under benchmarks/weights/ with a JSON sidecar holding the test accuracy and training settings.

    nice -n 10 python benchmarks/train_fashion_resnet.py --epochs 4            # 2 CPU threads by default
    python benchmarks/train_fashion_resnet.py --device cuda --epochs 4        # same recipe on a GPU
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DATA = Path("/usr/share/datasets/fashion-mnist")
WEIGHTS = Path(__file__).resolve().parent / "weights" / "fashion_resnet20.safetensors"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-set pixel statistics (x / 255)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2) for 1x28x28: stem, three stages (widths w, 2w, 4w), global average pool, linear."""

    def __init__(self, n: int = 3, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            for b in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and b == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build() -> ResNet:
    """The --arch factory: ResNet-20 layout, widths 16/32/64, for (N, 1, 28, 28) normalised input."""
    return ResNet(3, 16, 10)


def _idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(DATA / name, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fashion(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Full train (60k) or test (10k) split as normalised float (N, 1, 28, 28) and int64 labels."""
    pre = "train" if split == "train" else "t10k"
    x = _idx(f"{pre}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    y = _idx(f"{pre}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return (torch.from_numpy(x.astype(np.float32)) / 255.0 - MEAN) / STD, torch.from_numpy(y)


def fashion_npz(split: str, path: Path, n: int | None = None) -> Path:
    """A split (its first n images) as a user's data file: normalised float32 `input` + int64 `labels`, the layout
    `edgekit compress --data` trains on and `edgekit eval --task npz` scores accuracy on. Written once."""
    if not path.is_file():
        x, y = load_fashion(split)
        np.savez(path, input=x[:n].numpy(), labels=y[:n].numpy())
    return path


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy (eval mode) on the given tensors, on the model's device."""
    model.eval()
    dev = next(model.parameters()).device
    hits = sum(int((model(x[i:i + batch].to(dev)).argmax(1).cpu() == y[i:i + batch]).sum())
               for i in range(0, len(x), batch))
    return hits / len(x)


def train(epochs: int = 4, batch: int = 128, lr: float = 0.1, device: str = "cpu", seed: int = 0) -> tuple[ResNet, dict]:
    """SGD + one-cycle LR, random horizontal flip and 2-px shift; returns the model (eval) and its record."""
    torch.manual_seed(seed)
    xtr, ytr = load_fashion("train")
    xte, yte = load_fashion("test")
    model = build().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * (len(xtr) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.25)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(len(xtr) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            xb, yb = xtr[idx], ytr[idx]
            flip = torch.rand(len(xb), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xb = torch.roll(xb, (dy, dx), (2, 3))
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {ep + 1}/{epochs}: loss {loss.item():.3f}, {time.perf_counter() - t0:.0f} s", flush=True)
    acc = accuracy(model, xte, yte)
    rec = {"arch": "benchmarks.train_fashion_resnet:build", "test_accuracy": acc, "epochs": epochs, "batch": batch,
           "lr": lr, "seed": seed, "device": device, "train_seconds": round(time.perf_counter() - t0, 1),
           "params": sum(p.numel() for p in model.parameters())}
    return model.cpu().eval(), rec


def save(model: nn.Module, rec: dict, path: Path = WEIGHTS) -> None:
    """Write the state dict as safetensors and the record as a JSON sidecar."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(rec, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model, rec = train(a.epochs, device=a.device)
    save(model, rec, a.out)
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
