"""DenseShift (spec shared/methods/denseshift.md §9): chain values, gradients, grid, BN fold, fine-tuning, export."""
from __future__ import annotations

import copy
import itertools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data import DataSource
from edgekit.errors import ConfigError
from edgekit.methods import get_method, parse_config
from edgekit.methods.denseshift import Config, apply, steps_for
from edgekit.methods.denseshift.convert import fold_scale_into_bn, round_to_grid, search_scale
from edgekit.methods.denseshift.shift import ShiftLayer, exponent, n_latents, shift_weight
from edgekit.quant import get_codes


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP spin-waits on a loaded 2-core box (20x slower there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyCNN(nn.Module):
    """stem conv-BN, conv-BN (bias), conv without BN, hidden linear without BN, head: every conversion path."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.hidden = nn.Linear(16, 12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(F.relu(self.hidden(x.mean((2, 3)))))


def tiny_cnn() -> TinyCNN:
    """--arch factory: random weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    m = TinyCNN()
    with torch.no_grad():
        for bn in (m.bn0, m.bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return m.eval()


def cfg(**kw) -> Config:
    return parse_config(get_method("denseshift"), kw)


# ------------------------------------------------------------------ §9.1/9.3: chain values, latent = 0
def _trailing_run(signs: tuple[int, ...]) -> int:
    """Reference for the recursive chain: number of consecutive positive latents ending at θ_K."""
    n = 0
    for s in reversed(signs):
        if s <= 0:
            break
        n += 1
    return n


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_recursive_chain_values_for_every_sign_pattern(bits):
    K = n_latents(bits, "recursive", zero=False)
    assert K == 2 ** (bits - 1) - 1
    pats = list(itertools.product([-1, 1], repeat=K))
    lat = torch.tensor(pats, dtype=torch.float64).T.reshape(K, len(pats)) * 0.3
    e = exponent(lat, "recursive")
    assert e.tolist() == [float(_trailing_run(p)) for p in pats]
    assert set(e.tolist()) == set(range(K + 1))  # every exponent 0..P-1 reachable


def test_three_bit_chain_matches_the_spec_formula():
    for t in itertools.product([-0.5, 0.0, 0.7], repeat=3):
        H = [1.0 if v > 0 else 0.0 for v in t]
        e1 = H[0]
        e2 = (e1 + 1) * H[1]
        e3 = (e2 + 1) * H[2]
        assert float(exponent(torch.tensor(t, dtype=torch.float64).reshape(3, 1), "recursive")[0]) == e3


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_binary_chain_values(bits):
    K = n_latents(bits, "binary", zero=False)
    assert K == bits - 1
    for pat in itertools.product([-1, 1], repeat=K):
        lat = torch.tensor(pat, dtype=torch.float64).reshape(K, 1)
        assert float(exponent(lat, "binary")[0]) == sum(2 ** k for k, s in enumerate(pat) if s > 0)


def test_zero_latents_give_plus_one():
    w = shift_weight(torch.zeros(4), torch.zeros(3, 4), "recursive")
    assert w.tolist() == [1.0] * 4  # S(0) = +1, H(0) = 0 -> e = 0


# ------------------------------------------------------------------ §9.5: gradients vs closed form
def test_gradients_match_closed_form_three_bit():
    torch.manual_seed(1)
    ths = torch.randn(64, dtype=torch.float64, requires_grad=True)
    lat = torch.randn(3, 64, dtype=torch.float64, requires_grad=True)
    G = torch.randn(64, dtype=torch.float64)
    W = shift_weight(ths, lat, "recursive")
    (W * G).sum().backward()
    with torch.no_grad():
        H = (lat > 0).double()
        s = torch.where(ths >= 0, 1.0, -1.0).double()
        e1 = H[0]
        e2 = (e1 + 1) * H[1]
        e3 = (e2 + 1) * H[2]
        assert torch.equal(W.detach(), s * 2 ** e3)
        g3 = G * s / (2 * torch.sqrt(e3 + 1))
        d3 = g3 * (e2 + 1)
        g2 = g3 * H[2]
        d2 = g2 * (e1 + 1)
        g1 = g2 * H[1]
        d1 = g1
    torch.testing.assert_close(ths.grad, G * torch.sqrt(e3 + 1), rtol=1e-6, atol=0)
    torch.testing.assert_close(lat.grad[2], d3, rtol=1e-6, atol=0)
    torch.testing.assert_close(lat.grad[1], d2, rtol=1e-6, atol=0)
    torch.testing.assert_close(lat.grad[0], d1, rtol=1e-6, atol=0)
    assert (lat.grad[2] != 0).all()  # θ_3 always receives gradient
    active = (H[2] > 0) & (H[1] > 0)
    assert (lat.grad[0][active] != 0).all() and (lat.grad[0][~active] == 0).all()


# ------------------------------------------------------------------ §9.1: grid, no zero, conversion
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_converted_weights_are_signed_powers_of_two_times_scale_without_zero(bits):
    m = tiny_cnn()
    m2, rep = apply(copy.deepcopy(m), cfg(bits=bits))
    codes = get_codes(m2)
    assert set(codes) == {"conv1.weight", "conv2.weight", "hidden.weight"}
    assert rep.layers_skipped.keys() == {"stem", "fc"}
    P = 2 ** (bits - 1)
    allowed = {s * 2 ** p for s in (-1, 1) for p in range(P)}
    mods = dict(m2.named_modules())
    for name, c in codes.items():
        vals = set(torch.unique(c.codes).tolist())
        assert 0 not in vals and vals <= allowed
        w = mods[name.rsplit(".", 1)[0]].weight.detach()
        assert torch.equal(w, c.dequantize())  # the float weight IS scale x code, bit for bit
        assert (w != 0).all()
    assert rep.extra["scale_folded_into_bn"] == ["conv1"] and rep.extra["scale_kept"] == ["conv2", "hidden"]
    assert bool((codes["conv1.weight"].scale == 1).all())  # folded: pure integers in the conv


def test_pot_zero_grid_has_zero_and_fewer_magnitudes():
    x = torch.linspace(-12, 12, 2001)
    q = round_to_grid(x, 3, zero=True)
    assert set(q.unique().tolist()) == {-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0}
    q2 = round_to_grid(x, 3, zero=False)
    assert set(q2.unique().tolist()) == {-8.0, -4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 8.0}
    # nearest in the linear domain
    assert torch.equal(round_to_grid(torch.tensor([1.49, 1.5, 2.9, 3.1, -0.2]), 3, False),
                       torch.tensor([1.0, 2.0, 2.0, 4.0, -1.0]))
    m2, rep = apply(tiny_cnn(), cfg(bits=3, variant="pot_zero"))
    assert 0 in rep.extra["levels"] and max(abs(v) for v in rep.extra["levels"]) == 4


def test_scale_search_never_worse_than_max_aligned_scale():
    torch.manual_seed(3)
    w = torch.randn(32, 64) * torch.rand(32, 1)
    for bits in (2, 3, 4):
        errs = []
        for search in (0, 24):
            a, c = search_scale(w, bits, False, search)
            errs.append(((w.double() - a.double()[:, None] * c) ** 2).sum(1))
        assert (errs[1] <= errs[0] + 1e-12).all() and float(errs[1].sum()) < float(errs[0].sum())
        # least-squares optimality of the chosen scale for its own codes
        a, c = search_scale(w, bits, False, 24)
        a_ls = (w.double() * c).sum(1) / (c * c).sum(1)
        q_ls = round_to_grid(w.double() / a_ls[:, None], bits, False)
        err_ls = ((w.double() - a_ls[:, None] * q_ls) ** 2).sum(1)
        assert (((w.double() - a.double()[:, None] * c) ** 2).sum(1) <= err_ls + 1e-9).all()


# ------------------------------------------------------------------ BN fold exactness
def test_bn_fold_is_exact_on_the_model():
    m = tiny_cnn()
    x = torch.randn(6, 3, 16, 16)
    a, _ = apply(copy.deepcopy(m), cfg(bits=3, fold_bn=True))
    b, rep_b = apply(copy.deepcopy(m), cfg(bits=3, fold_bn=False))
    assert rep_b.extra["scale_folded_into_bn"] == []
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert (ya - yb).abs().max() <= 1e-5 * max(1.0, float(yb.abs().max()))


@pytest.mark.parametrize("big_alpha", [False, True])
def test_fold_scale_into_bn_formula(big_alpha):
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(4, 6, 3, bias=True), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(1e-6, 2) if big_alpha else bn.running_var.uniform_(0.1, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    alpha = torch.rand(6) * (100 if big_alpha else 0.1) + 0.01
    x = torch.randn(3, 4, 9, 9)
    with torch.no_grad():
        ref = bn(conv(x))
        conv2, bn2 = copy.deepcopy(conv), copy.deepcopy(bn)
        assert fold_scale_into_bn(conv2, bn2, alpha)
        conv2.weight.div_(alpha[:, None, None, None])
        out = bn2(conv2(x))
    assert (out - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    assert (bn2.running_var >= 0).all()


# ------------------------------------------------------------------ §9.2: forward equivalence, init from codes
@pytest.mark.parametrize("bits,chain,zero", [(2, "recursive", False), (3, "recursive", False),
                                             (4, "recursive", False), (3, "binary", False), (3, "recursive", True),
                                             (2, "recursive", True)])
def test_latents_initialised_from_trained_weights_reproduce_codes(bits, chain, zero):
    torch.manual_seed(4)
    conv = nn.Conv2d(5, 7, 3, padding=1)
    alpha, codes = search_scale(conv.weight, bits, zero, 24)
    layer = ShiftLayer(copy.deepcopy(conv), bits, chain, zero, alpha)
    x = conv.weight.detach().double() / alpha.double()[:, None, None, None]
    layer.init_from(x, codes)
    assert torch.equal(layer.codes().double(), codes)
    inp = torch.randn(2, 5, 6, 6)
    with torch.no_grad():
        y = layer(inp)
        plain, code = layer.materialize()
        assert torch.equal(y, F.conv2d(inp, plain.weight, plain.bias, padding=1))
    # every exponent latent is off its threshold, on the side its pattern needs
    assert (layer.theta_e.abs() >= 1e-4).all()


def test_lowvar_init_distribution():
    conv = nn.Conv2d(64, 64, 5)  # 102,400 weights
    m = nn.Sequential(conv, nn.BatchNorm2d(64))
    m2, rep = apply(m, cfg(bits=3, init="lowvar", keep_first=False))
    c = get_codes(m2)["0.weight"].codes.flatten()
    n = c.numel()
    assert n >= 100_000
    obs = torch.stack([(c.abs() == v).sum() for v in (1, 2, 4, 8)]).double()
    exp = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64) * n
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert chi2 < 16.27  # chi-square, 3 d.o.f., p = 0.001
    pos = float((c > 0).double().mean())
    assert abs(pos - 0.5) < 4 * 0.5 / math.sqrt(n)


# ------------------------------------------------------------------ §9.6: learning sanity, resume, options
def _teacher_task(n: int = 512):
    torch.manual_seed(5)
    teacher = tiny_cnn()
    x = torch.randn(n, 3, 16, 16)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    return DataSource([x, y])


def test_fine_tuning_lowers_the_loss():
    data = _teacher_task()
    _, rep = apply(tiny_cnn(), cfg(bits=2, train_steps=40, batch_size=64, lr=3e-3, progress=False), data)
    tr = rep.extra["training"]
    assert tr["loss"] == "ce" and tr["steps"] == 40
    assert tr["fixed_batch_loss_after"] < 0.9 * tr["fixed_batch_loss_before"], tr
    assert any(f > 0 for f in tr["freezing"]["flip_rate"])  # discrete weights do move


class _SamePadConv(nn.Conv2d):
    """A conv subclass that pads in its own forward (EfficientNet's static same padding)."""

    def forward(self, x):
        return super().forward(F.pad(x, (0, 1, 0, 1)))


def test_shift_layer_keeps_a_conv_subclass_forward():
    from edgekit.methods.denseshift.shift import ShiftLayer

    torch.manual_seed(0)
    base = _SamePadConv(4, 6, 2)
    layer = ShiftLayer(copy.deepcopy(base), 3, "recursive", False, torch.full((6,), 0.05))
    layer.theta_s.data.normal_()
    layer.theta_e.data.normal_()
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        base.weight.copy_(layer.weight())
    y = layer(x)
    assert y.shape == base(x).shape == (2, 6, 7, 7)  # the subclass's padding ran (plain conv: 6x6)
    assert torch.allclose(y, base(x), atol=1e-6)
    y.sum().backward()
    assert layer.theta_s.grad is not None and layer.theta_s.grad.abs().sum() > 0


def test_fine_tuning_without_labels_distils_and_zero_steps_is_conversion_only():
    x = _teacher_task().tensors[0]
    _, rep = apply(tiny_cnn(), cfg(bits=3, train_steps=10, batch_size=32, progress=False), DataSource([x]))
    assert rep.extra["training"]["loss"] == "kd"
    a, _ = apply(tiny_cnn(), cfg(bits=3, train_steps=0), DataSource([x]))
    b, rep_b = apply(tiny_cnn(), cfg(bits=3, variant="pot_nozero_noft", train_steps=50), DataSource([x]))
    assert rep_b.extra["training"] is None
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    data = _teacher_task(256)
    base = dict(bits=3, train_steps=12, batch_size=32, lr=3e-3, progress=False)
    full, _ = apply(tiny_cnn(), cfg(**base), data)
    ck = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):  # killed after 6 steps; the checkpoint of step 6 stays
        apply(tiny_cnn(), cfg(checkpoint=str(ck), checkpoint_every=6, **base), _Stop(data, 6))
    assert torch.load(ck, weights_only=True)["step"] == 6
    resumed, rep = apply(tiny_cnn(), cfg(checkpoint=str(ck), checkpoint_every=6, **base), data)
    assert rep.extra["training"]["resumed_at"] == 6
    for (k, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), k
    with pytest.raises(ConfigError):  # another configuration refuses the checkpoint
        apply(tiny_cnn(), cfg(checkpoint=str(ck), **{**base, "lr": 1e-2}), data)


class _Stop:
    """A DataSource whose tensors raise after `n` batches: simulates a run killed mid-way (checkpoint kept)."""

    def __init__(self, data: DataSource, n: int):
        self.tensors = [_Limited(t, n) for t in data.tensors]


class _Limited:
    def __init__(self, t: torch.Tensor, n: int):
        self.t, self.n, self.calls = t, n, 0
        self.dtype, self.shape = t.dtype, t.shape

    def __len__(self):
        return len(self.t)

    def __getitem__(self, idx):
        self.calls += 1
        if self.calls > self.n + 1:  # +1: the fixed comparison batch
            raise KeyboardInterrupt
        return self.t[idx]

    def is_floating_point(self):
        return self.t.is_floating_point()

    def dim(self):
        return self.t.dim()

    def long(self):
        return _Limited(self.t.long(), self.n)


def test_steps_default_and_needs_data():
    assert steps_for(cfg(), None) == 0 and steps_for(cfg(), object()) == 300
    assert steps_for(cfg(train_steps=7), None) == 7
    with pytest.raises(ConfigError):
        apply(tiny_cnn(), cfg(train_steps=5))
    with pytest.raises(ConfigError):
        cfg(bits=5)
    assert get_method("denseshift").NEEDS == "training"


# ------------------------------------------------------------------ §9.8: export on three runtimes, stored codes
def stored_codes(model) -> dict[str, tuple[str, np.ndarray]]:
    """{parameter: (storage, integer codes as the file holds them)}: int8/int4 `__q` initializers, and 4-bit index
    `__idx` initializers decoded through their `__lut` table."""
    from onnx import numpy_helper

    inits = {i.name: (i.data_type, numpy_helper.to_array(i)) for i in model.graph.initializer}
    out = {}
    for name, (dt, arr) in inits.items():
        if name.endswith("__q"):
            out[name[:-3]] = (f"dtype{dt}", arr.astype(np.int64))
        elif name.endswith("__idx"):
            lut = inits[name[:-5] + "__lut"][1]
            out[name[:-5]] = (f"lut{dt}", lut[arr.astype(np.int64)].astype(np.int64))
        elif name.endswith("__bp0"):  # b bit planes of table indices, 8 per byte (export/qdq.py `_bitplanes`)
            base = name[:-5]
            shape = inits[base + "__bp_shape"][1]
            planes = [inits[f"{base}__bp{k}"][1] for k in range(3) if f"{base}__bp{k}" in inits]
            n = int(np.prod(shape))
            idx = sum(np.unpackbits(pl.ravel(), bitorder="little")[:n].astype(np.int64) << k
                      for k, pl in enumerate(planes))
            out[base] = (f"bitplane{len(planes)}", inits[base + "__lut"][1][idx.reshape(shape)].astype(np.int64))
    return out


@pytest.mark.parametrize("bits,storage,runtimes", [(3, "packed", ("onnxruntime", "openvino", "tflite")),
                                                   (3, "int8", ("onnxruntime", "openvino")),
                                                   (2, "packed", ("onnxruntime", "openvino"))])
def test_export_validates_and_the_file_holds_the_power_of_two_codes(tmp_path, bits, storage, runtimes):
    onnx = pytest.importorskip("onnx")
    from safetensors.torch import save_file

    from edgekit import api
    from edgekit.artifact import read_manifest

    for rt in runtimes:
        pytest.importorskip({"onnxruntime": "onnxruntime", "openvino": "openvino", "tflite": "litert_torch"}[rt])
    src = tmp_path / "w.safetensors"
    save_file(tiny_cnn().state_dict(), str(src))
    art = api.compress(src, "denseshift", {"bits": bits, "storage": storage}, tmp_path / "art",
                       input_shape="1x3x16x16", arch="tests.unit.test_denseshift:tiny_cnn", runtimes=list(runtimes))
    man = read_manifest(art)
    assert set(man["exports"]) == set(runtimes)
    for rt, e in man["exports"].items():  # validated against PyTorch at the fp32 tolerance
        assert e["precision"] == "fp32" and min(o["cosine"] for o in e["validation"]["outputs"].values()) > 0.99999
    got = stored_codes(onnx.load(str(art / "model.onnx")))
    ref, rep = apply(tiny_cnn(), cfg(bits=bits, storage=storage))
    want = {k: v.codes.numpy().astype(np.int64) for k, v in get_codes(ref).items()}
    assert set(got) == set(want) and man["integer_weights"]["integer_weights"] == 3
    kind = {(3, "packed"): "bitplane3", (3, "int8"): f"dtype{onnx.TensorProto.INT8}",
            (2, "packed"): "bitplane2"}[(bits, storage)]
    for name, (k, arr) in got.items():
        assert k == kind, (name, k)
        assert np.array_equal(arr, want[name]) or np.array_equal(arr.T, want[name]), name
        assert 0 not in np.unique(arr)
    stored = man["integer_weights"]["weight_bytes_stored"] * 8 / rep.extra["converted_weights"]
    assert stored == (8 if storage == "int8" else bits) == rep.extra["stored_bits_per_converted_weight"]
    if storage == "packed" and "openvino" in runtimes:  # the IR keeps the bit planes as bytes, not floats
        import openvino as ov

        ir = ov.Core().read_model(str(art / man["exports"]["openvino"]["file"]))
        consts = {op.get_friendly_name(): op for op in ir.get_ordered_ops() if op.get_type_name() == "Constant"}
        planes = {i.name: i for i in onnx.load(str(art / "model.onnx")).graph.initializer if re.search(r"__bp\d+$", i.name)}
        assert len(planes) == 3 * bits and set(planes) <= set(consts)
        assert all(str(consts[n].get_element_type()) == "<Type: 'uint8_t'>" for n in planes)
        f32 = sum(op.get_byte_size() for op in consts.values() if "float32" in str(op.get_element_type()))
        assert f32 < 4 * rep.extra["converted_weights"] / 4, f32  # no float copy of the converted weights
    if storage == "packed":  # a plain ONNX Runtime session folds the decode at load (no per-call unpacking)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
        ort.InferenceSession(str(art / "model.onnx"), so, providers=["CPUExecutionProvider"])
        left = {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
        assert not left & {"Floor", "Mod", "Gather", "DequantizeLinear"}, left


# ------------------------------------------------------------------ data: image folder and IDX folder
def test_image_folder_and_idx_folder_feed_fine_tuning(tmp_path):
    import gzip

    from PIL import Image

    from edgekit.data import open_data

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    src = open_data(tmp_path / "imgs")
    assert src.tensors[0].shape == (6, 3, 16, 16) and src.tensors[0].dtype == torch.uint8
    assert src.tensors[1].tolist() == [0, 0, 0, 1, 1, 1]
    _, rep = apply(tiny_cnn(), cfg(bits=3, train_steps=2, batch_size=4, progress=False, input_mean=[0.5, 0.5, 0.5],
                                   input_std=[0.25, 0.25, 0.25]), src)
    assert rep.extra["training"]["loss"] == "ce"
    idx = tmp_path / "idx"
    idx.mkdir()
    imgs = rng.integers(0, 255, (5, 28, 28), dtype=np.uint8)
    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\0" * 16 + imgs.tobytes())
    with gzip.open(idx / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\0" * 8 + bytes([1, 2, 3, 4, 5]))
    d = open_data(idx)
    assert torch.equal(d.tensors[0][:, 0], torch.from_numpy(imgs)) and d.tensors[1].tolist() == [1, 2, 3, 4, 5]


def test_input_size_resizes_grey_images_into_an_rgb_network_as_the_wrapper_did():
    """input_size: 8 px grey uint8 images feed a 3-channel network at 16 px exactly as normalise -> bilinear resize
    -> channel repeat (the order of the old in-model wrapper); without it the images stay 8 px; and training runs."""
    from edgekit.methods.denseshift.train import Batches

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 255, (6, 8, 8), dtype=np.uint8))
    src = DataSource([x], source="grey")
    c = cfg(bits=3, input_mean=[0.5], input_std=[0.25], input_size=16)
    got = Batches(src, c, tiny_cnn()).prep(x[:4])
    ref = F.interpolate(((x[:4].float() / 255 - 0.5) / 0.25).unsqueeze(1), size=(16, 16), mode="bilinear",
                        align_corners=False).expand(-1, 3, -1, -1)
    assert got.shape == (4, 3, 16, 16) and torch.allclose(got, ref, atol=1e-6)
    assert not torch.allclose(got[:, :, :8, :8], got[:, :, 8:, 8:])  # a real resize, not a tiling
    assert Batches(src, cfg(bits=3), tiny_cnn()).prep(x[:4]).shape == (4, 3, 8, 8)
    _, rep = apply(tiny_cnn(), cfg(bits=3, train_steps=2, batch_size=4, progress=False, input_size=16), src)
    assert rep.extra["training"]["loss"] == "kd" and math.isfinite(rep.extra["training"]["train_loss_last"])


class _WithFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x):
        return self.net(x), x.mean((2, 3))


def test_a_model_with_logits_and_features_is_distilled_on_its_logits():
    """(logits, features) outputs: the KD loss reads the logits; it equals the loss of the logits-only model."""
    from edgekit.methods.denseshift.train import compute_loss

    x = torch.randn(4, 3, 8, 8)
    two, one = _WithFeatures().eval(), tiny_cnn()
    with torch.no_grad():
        a = compute_loss("kd", two(x), None, (two(x)[0] * 0.5, x), 2.0)
        b = compute_loss("kd", one(x), None, one(x) * 0.5, 2.0)
    assert float(a) > 0 and torch.allclose(a, b)
    _, rep = apply(_WithFeatures().eval(), cfg(bits=3, train_steps=2, batch_size=4, progress=False),
                   DataSource([torch.randn(8, 3, 8, 8)], source="x"))
    assert math.isfinite(rep.extra["training"]["train_loss_last"])


# ------------------------------------------------------------------ §9.7: exponent-add kernel reference
def test_exponent_add_equals_the_product_and_masks_zero():
    from edgekit.methods.denseshift.kernel import shift_mul_fp16

    rng = np.random.default_rng(7)
    x = rng.standard_normal(4096).astype(np.float16)
    p = rng.integers(0, 4, 4096)
    s = rng.choice([-1, 1], 4096)
    want = (x.astype(np.float32) * s * 2.0 ** p).astype(np.float16)
    got = shift_mul_fp16(x, s, p)
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
    z = shift_mul_fp16(np.zeros(4, np.float16), np.array([1, -1, 1, -1]), np.array([0, 1, 2, 3]))
    assert (z == 0).all()
    # the unmasked trick really is wrong for x = 0 (it gives 2^(p-15)), which is why the mask exists
    raw = ((np.zeros(1, np.float16).view(np.uint16).astype(np.int32) + (3 << 10)) & 0xFFFF).astype(np.uint16)
    assert raw.view(np.float16)[0] != 0


def test_save_weights_round_trips_exactly_and_never_overwrites(tmp_path):
    """save_weights: the fine-tuned model's state dict under the source's keys; compressing it again with
    train_steps=0 gives the same weights (conversion of on-grid weights is exact); an existing file is refused."""
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import load_file

    x = torch.randn(16, 3, 8, 8)
    f = tmp_path / "ds.safetensors"
    m1, rep = apply(tiny_cnn(), cfg(bits=3, train_steps=3, batch_size=4, progress=False, save_weights=str(f)),
                    DataSource([x], source="x"))
    sd = load_file(str(f))
    assert set(sd) == set(tiny_cnn().state_dict()) and rep.extra["saved_weights"]["bytes"] == f.stat().st_size
    with safe_open(str(f), "pt") as h:
        assert _json.loads(h.metadata()["denseshift"])["train_steps"] == 3
    src = tiny_cnn()
    src.load_state_dict(sd)
    m2, _ = apply(src, cfg(bits=3, train_steps=0))
    with torch.no_grad():
        assert torch.allclose(m1(x), m2(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="does not overwrite"):
        apply(tiny_cnn(), cfg(bits=3, train_steps=0, save_weights=str(f)))
    with pytest.raises(ConfigError, match=".safetensors"):
        apply(tiny_cnn(), cfg(bits=3, train_steps=0, save_weights=str(tmp_path / "x.pt")))


def test_shift_accelerator_estimate_is_amdahl_on_the_converted_macs():
    """The report's labelled estimate: f = converted layers' share of Conv/Linear MACs (counted by hand here),
    speed-up 1/((1-f) + f/1.6); the first conv and last linear (kept float) are outside f."""
    x = torch.randn(1, 3, 8, 8)
    _, rep = apply(tiny_cnn(), cfg(bits=3, train_steps=0), example_inputs=(x,))
    # TinyCNN on 8x8: stem 3->8 3x3 (8x8 out), conv1 8->16 s2 (4x4), conv2 16->16 (4x4), hidden 16->12, fc 12->5
    stem, conv1, conv2, hidden, fc = 64 * 8 * 27, 16 * 16 * 72, 16 * 16 * 144, 12 * 16, 5 * 12
    f = (conv1 + conv2 + hidden) / (stem + conv1 + conv2 + hidden + fc)
    assert set(rep.layers_touched) == {"conv1", "conv2", "hidden"}
    assert rep.extra["shift_estimate_mac_fraction"] == pytest.approx(f, abs=1e-4)
    assert rep.extra["shift_estimate_speedup"] == pytest.approx(1 / ((1 - f) + f / 1.6), abs=1e-3)
    assert "ESTIMATE" in rep.extra["shift_estimate_label"]
    from edgekit.profile import hardware_estimates  # reaches the profile report, labelled as an estimate

    hw = hardware_estimates({"method": {"name": "denseshift", "report": {"extra": rep.extra}}})
    assert len(hw) == 1 and hw[0]["method"] == "denseshift" and hw[0]["speedup"] == rep.extra["shift_estimate_speedup"]
    assert "shift_estimate_speedup" not in apply(tiny_cnn(), cfg(bits=3, train_steps=0))[1].extra
