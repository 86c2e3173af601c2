"""Safe loading: malicious pickles never run, disallowed classes are named, state-dict errors name the keys."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgekit.errors import ConfigError, ModelLoadError, UnsafeModelError
from edgekit.model_io import load_model, parse_input_shape
from tests.conftest import TinyNet, tiny_net


class Payload:
    """Unpickling this creates a file: the attack we must never let run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class CustomNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"model": nn.Linear(2, 2), "x": Payload(str(marker))}, bad)
    assert not marker.exists()  # torch.save itself must not run it
    with pytest.raises(UnsafeModelError) as e:
        load_model(bad)
    msg = str(e.value)
    # refused outright: the message must not suggest allowing the dangerous names (issue: it used to)
    assert "pathlib" in msg and "--allow-class" not in msg and "no option allows" in msg
    assert "\n" not in msg
    for allow in (["pathlib.Path", "pathlib.PosixPath", "builtins.getattr"], ["builtins.eval"]):
        with pytest.raises(UnsafeModelError, match="never allowed"):
            load_model(bad, allow_class=allow)
    assert not marker.exists()


def test_trust_pickle_really_unpickles(tmp_path):
    """The opt-in path does what it says (and so is dangerous): proves the refusal above is meaningful."""
    marker = tmp_path / "ran"
    f = tmp_path / "evil.pt"
    torch.save(Payload(str(marker)), f)
    with pytest.warns(UserWarning, match="trust-pickle"), pytest.raises(ModelLoadError):
        load_model(f, trust_pickle=True)  # payload returns None -> not a module
    assert marker.exists()


def test_torch_nn_module_pickle_loads_without_flags(tmp_path):
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    f = tmp_path / "seq.pt"
    torch.save(m, f)
    loaded = load_model(f)
    x = torch.randn(2, 4)
    assert torch.equal(loaded.module(x), m(x))


def test_custom_class_needs_allow_class(tmp_path):
    f = tmp_path / "custom.pt"
    torch.save(CustomNet().eval(), f)
    with pytest.raises(UnsafeModelError, match="tests.unit.test_model_io.CustomNet"):
        load_model(f)
    loaded = load_model(f, allow_class=["tests.unit.test_model_io.CustomNet"])
    assert isinstance(loaded.module, CustomNet)


def test_state_dict_with_arch(tmp_path):
    ref = tiny_net()
    f = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(f))
    loaded = load_model(f, arch="tests.conftest:tiny_net")
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(loaded.module(x), ref(x))
    pt = tmp_path / "w.pt"
    torch.save(ref.state_dict(), pt)
    assert isinstance(load_model(pt, arch="tests.conftest:tiny_net").module, TinyNet)


def test_state_dict_missing_and_unexpected_keys_named(tmp_path):
    sd = tiny_net().state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    f = tmp_path / "w.safetensors"
    save_file(sd, str(f))
    with pytest.raises(ModelLoadError) as e:
        load_model(f, arch="tests.conftest:tiny_net")
    assert "fc.bias" in str(e.value) and "extra.weight" in str(e.value)


def test_state_dict_shape_mismatch_named(tmp_path):
    sd = tiny_net().state_dict()
    sd["fc.weight"] = torch.zeros(7, 8)
    f = tmp_path / "w.safetensors"
    save_file(sd, str(f))
    with pytest.raises(ModelLoadError, match=r"fc\.weight \(7, 8\)"):
        load_model(f, arch="tests.conftest:tiny_net")


@pytest.mark.parametrize("name,content", [("trunc.pt", None), ("text.pt", b"hello, not a model"),
                                          ("bad.safetensors", b"\x00\x01garbage"), ("bad.pt2", b"nope")])
def test_bad_files_give_model_load_errors(tmp_path, name, content):
    f = tmp_path / name
    if content is None:
        good = tmp_path / "good.pt"
        torch.save(nn.Linear(4, 4), good)
        content = good.read_bytes()[:200]
    f.write_bytes(content)
    arch = "tests.conftest:tiny_net" if name.endswith(".safetensors") else None
    with pytest.raises(ModelLoadError):
        load_model(f, arch=arch)


def test_plain_pickle_file_is_not_executed(tmp_path):
    marker = tmp_path / "pwned2"
    f = tmp_path / "legacy.pt"
    f.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises((ModelLoadError, UnsafeModelError)):
        load_model(f)
    assert not marker.exists()


def test_pt2_roundtrip(tmp_path, tiny):
    x = torch.randn(1, 3, 8, 8)
    f = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny, (x,)), str(f))
    loaded = load_model(f)
    assert torch.allclose(loaded.module(x), tiny(x), atol=1e-6)


def test_missing_and_weights_only_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    f = tmp_path / "w.safetensors"
    save_file(tiny_net().state_dict(), str(f))
    with pytest.raises(ConfigError, match="--arch"):
        load_model(f)


def test_input_shape_parsing():
    specs = parse_input_shape("1x3x224x224,1x128:int64", ["batch"])
    assert specs[0].shape == [1, 3, 224, 224] and specs[0].dtype == "float32" and specs[0].dynamic == {0: "batch"}
    assert specs[1].dtype == "int64" and specs[1].name == "input_1"
    for bad in ("1x3xax4", "1x0x3", "1x3:complex", ""):
        with pytest.raises(ConfigError):
            parse_input_shape(bad)
    with pytest.raises(ConfigError):
        parse_input_shape("1x3", ["seq"])


def test_input_shape_without_dtype_keeps_the_models_own_input_type():
    """`--input-shape 1x512` on a token-id model keeps int64 (the source's type) and its name/range; an explicit
    `:dtype` still wins. (Before, an untyped shape became float32 and a decoder failed deep in export.)"""
    from edgekit.api import resolve_specs
    from edgekit.specs import InputSpec, LoadedModel

    known = [InputSpec("input_ids", [1, 128], "int64", high=49152)]
    loaded = LoadedModel(nn.Identity(), "smollm2", "decoder", inputs=known)
    s = resolve_specs(loaded, "1x512")[0]
    assert (s.name, s.shape, s.dtype, s.high) == ("input_ids", [1, 512], "int64", 49152)
    assert resolve_specs(loaded, "1x512:int32")[0].dtype == "int32"
    two = LoadedModel(nn.Identity(), "bert", "encoder", inputs=[InputSpec("input_ids", [1, 8], "int64", high=99),
                                                                InputSpec("attention_mask", [1, 8], "int64")])
    a, b = resolve_specs(two, "1x16,1x16:float32")
    assert (a.dtype, b.dtype, b.name) == ("int64", "float32", "attention_mask")
