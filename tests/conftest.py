"""Shared fixtures: tiny models built in code; quiet logs; offline."""
from __future__ import annotations

import os
from pathlib import Path
import warnings

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
torch.set_num_threads(2)


class TinyNet(nn.Module):
    """conv-BN-ReLU -> pool -> linear: the smallest model every path must handle."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def tiny_net() -> TinyNet:
    """Factory used by --arch tests (tests.conftest:tiny_net)."""
    torch.manual_seed(0)
    m = TinyNet()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture
def tiny() -> TinyNet:
    return tiny_net()


# Debian data packages the real evaluation tasks read (scripts/dev.sh installs them when it can): a test that needs a
# missing one is skipped with the install line, not failed. "Needs" = its source, or a fixture's it uses, names it.
_DATA = {"dataset-fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"), ("fashion",)),
         "wordnet-base": (Path("/usr/share/wordnet/data.noun"), ("wordnet",))}


def _sources(item: pytest.Item) -> str:
    import inspect

    parts = []
    for fn in [getattr(item, "function", None)] + [
            d.func for name in getattr(item, "fixturenames", ()) for d in
            (item._fixtureinfo.name2fixturedefs.get(name) or ())]:  # noqa: SLF001 - pytest's own fixture table
        try:
            parts.append(inspect.getsource(fn))
        except (TypeError, OSError):
            continue
    return "\n".join(parts).lower()


SPREAD = ("tests/unit/test_method_contract.py",)  # independent slow cases: spread over the workers one by one


def _xdist_group(item: pytest.Item) -> str | None:
    """pytest-xdist (--dist loadgroup) keeps a group on one worker: a file's tests share module fixtures, and the
    Ray files share Ray's default temp dir (two local clusters at once would race on its address file)."""
    path = item.nodeid.split("::", 1)[0]
    if path in SPREAD:
        return None
    return "ray" if Path(path).name.startswith("test_ray_") else path


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = _xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    missing = {pkg: needles for pkg, (path, needles) in _DATA.items() if not path.exists()}
    if not missing:
        return
    for item in items:
        src = _sources(item)
        for pkg, needles in missing.items():
            if any(n in src for n in needles):
                item.add_marker(pytest.mark.skip(reason=f"needs the {pkg} data package: apt-get install -y {pkg}"))
