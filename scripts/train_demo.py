"""Train the bundled demo CNN on scikit-learn's digits and write edgekit/models/digits_cnn.safetensors."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from edgekit.models.digits_cnn import WEIGHTS, DigitsCNN, digits_split


def main(epochs: int = 40, seed: int = 0) -> None:
    """Adam, batch 64, light shift augmentation; prints test accuracy."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits_split()
    m = DigitsCNN()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for ep in range(epochs):
        m.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            xb = torch.roll(xtr[idx], shifts=tuple(torch.randint(-1, 2, (2,)).tolist()), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(m(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    m.eval()
    with torch.no_grad():
        acc = (m(xte).argmax(1) == yte).float().mean().item()
    print(f"test accuracy {acc:.4f}")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(WEIGHTS))


if __name__ == "__main__":
    main()
