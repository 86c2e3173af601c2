"""methods.common.Checkpoint: resumable training state, tied to the options that wrote it, written atomically."""
from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel

from edgekit.errors import ConfigError
from edgekit.methods.common import Checkpoint


class Cfg(BaseModel):
    lr: float = 1e-3
    checkpoint: str | None = None
    progress: bool = True


def _setup(seed: int):
    torch.manual_seed(seed)
    m = torch.nn.Linear(4, 2)
    return m, torch.optim.AdamW(m.parameters(), lr=1e-3)


def test_save_resume_and_refuse_other_options(tmp_path):
    path = tmp_path / "ck.pt"
    cfg = Cfg(checkpoint=str(path))
    ck = Checkpoint(cfg.checkpoint, cfg, {"checkpoint", "progress"})
    m, opt = _setup(0)
    m(torch.ones(1, 4)).sum().backward()
    opt.step()
    ck.save(m, opt, 3, every=5, last=10)
    assert not path.exists()  # neither a multiple of 5 nor the last step
    ck.save(m, opt, 5, every=5, last=10)
    assert path.is_file() and not path.with_name("ck.pt.tmp").exists()
    m2, opt2 = _setup(1)
    # the progress flag is excluded from the key: a resume with it changed is fine
    assert Checkpoint(str(path), Cfg(checkpoint=str(path), progress=False), {"checkpoint", "progress"}).resume(
        m2, opt2, torch.device("cpu")) == 5
    assert torch.equal(m2.weight, m.weight) and opt2.state_dict()["state"][0]["step"] == 1
    with pytest.raises(ConfigError, match="another configuration"):
        Checkpoint(str(path), Cfg(checkpoint=str(path), lr=1.0), {"checkpoint", "progress"}).resume(
            *_setup(2), torch.device("cpu"))
    assert Checkpoint(None, cfg, set()).resume(*_setup(3), torch.device("cpu")) == 0
