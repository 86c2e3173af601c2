"""UDFC: spec §8 checks on tiny models built here (data-free; no downloads)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import UnsupportedModelError
from edgekit.flops import count_params
from edgekit.methods import get_method, parse_config
from edgekit.methods import _prune as P
from edgekit.methods import udfc
from edgekit.quant import get_codes

torch.manual_seed(0)


def cfg(**kw):
    return parse_config(udfc, {"input_shape": [1, 3, 8, 8], **kw})  # small MAC-count input keeps tests fast


def randomize_bn(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            n = b.num_features
            b.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            b.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            b.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            b.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
    return m.eval()


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


class TinyResNet(nn.Module):
    """stem -> 2 residual blocks -> concat branch -> depthwise -> pointwise(ReLU6) -> avgpool/flatten -> fc."""

    def __init__(self, c=16):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.branch, self.bbn = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.dw, self.dbn = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False), nn.BatchNorm2d(2 * c)
        self.pw, self.pbn = nn.Conv2d(2 * c, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        x = torch.cat([x, F.relu(self.bbn(self.branch(x)))], 1)
        x = F.relu6(self.pbn(self.pw(F.relu(self.dbn(self.dw(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Pair(nn.Module):
    """conv1 -> bn1 -> act -> conv2 (3x3) -> bn2 -> relu -> flatten (2x2 blocks) -> fc."""

    def __init__(self, n=6, act="relu"):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, n, 3, padding=1, bias=False), nn.BatchNorm2d(n)
        self.act = nn.ReLU() if act == "relu" else nn.Identity()
        self.conv2, self.bn2 = nn.Conv2d(n, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5 * 4, 3)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1))


def plant(m: Pair, combos: dict[int, dict[int, float]]) -> Pair:
    """Make filter j a combination of kept filters so that its BN output is exactly Σ c_i · (BN output i)."""
    randomize_bn(m, 1)
    a, K = P.bn_fold(m.conv1, m.bn1)
    with torch.no_grad():
        for j, cs in combos.items():
            m.bn1.weight[j] = 3.0 * float(torch.sqrt(m.bn1.running_var[j] + m.bn1.eps))  # a_j = 3: small planted norm
            a[j] = 3.0
            m.conv1.weight[j] = sum(c * a[i] / a[j] * m.conv1.weight[i] for i, c in cs.items()).float()
            Kj = sum(c * K[i] for i, c in cs.items())  # K_j = β_j − a_j μ_j
            m.bn1.bias[j] = float(Kj + a[j] * m.bn1.running_mean[j])
    norms = P.filter_norms(m.conv1.weight, "l2")
    assert set(norms.argsort()[: len(combos)].tolist()) == set(combos)  # the criterion prunes the planted ones
    return m


X = torch.randn(8, 3, 8, 8)


# ------------------------------------------------------------------ §8.1 identity
def test_identity_r0_no_quant_bit_identical():
    m = randomize_bn(TinyResNet())
    y0 = m(X)
    m2, rep = udfc.apply(copy.deepcopy(m), cfg(ratio=0.0, bits=None), data=None)
    assert torch.equal(m2(X), y0) and rep.params_after == rep.params_before


def test_r0_k16_scale_near_one():
    m = randomize_bn(TinyResNet())
    y0 = m(X)
    m2, rep = udfc.apply(copy.deepcopy(m), cfg(ratio=0.0, bits=16), data=None)
    lo, hi = rep.extra["s_tilde_range"]
    assert 1 - 1e-4 < lo <= hi < 1 + 1e-4
    assert (m2(X) - y0).abs().max() <= 1e-3 * y0.abs().max()
    assert get_codes(m2) == {}  # > 8 bits: float only


# ------------------------------------------------------------------ §8.2 exact recovery
@pytest.mark.parametrize("eps_ridge", [0.0, 1e-13])
def test_exact_recovery_single_channel_relu(eps_ridge):
    m = plant(Pair(6, "relu"), {4: {1: 0.3}})
    y0 = m(X)
    a, K = P.bn_fold(m.conv1, m.bn1)
    keep, prune = torch.tensor([0, 1, 2, 3, 5]), torch.tensor([4])
    S = udfc.prune_coefficients(m.conv1.weight, a, K, keep, prune, 0.01, eps_ridge)
    assert torch.allclose(S, torch.tensor([[0, 0.3, 0, 0, 0]], dtype=torch.float64), atol=1e-6)
    m2, rep = udfc.apply(m, cfg(ratio=1 / 6, bits=None, eps_ridge=eps_ridge, skip=["^conv2$"]), data=None)
    assert rep.extra["pruned"]["conv1"] == [6, 5] and m2.conv1.out_channels == 5 and m2.conv2.in_channels == 5
    assert (m2(X) - y0).abs().max() < 1e-5


def test_exact_recovery_two_channels_identity():
    m = plant(Pair(7, "identity"), {5: {0: 0.2, 1: -0.1}, 6: {2: 0.15, 3: 0.1, 4: -0.05}})
    y0 = m(X)
    m2, rep = udfc.apply(m, cfg(ratio=2 / 7, bits=None, eps_ridge=1e-13, skip=["^conv2$"]), data=None)
    assert rep.extra["pruned"]["conv1"] == [7, 5]
    assert (m2(X) - y0).abs().max() < 1e-5


def test_gamma_zero_channel_folded_into_consumer_bias():
    m = Pair(6, "relu")
    m.conv2 = nn.Conv2d(6, 5, 1, bias=False)  # 1x1 consumer: no padding, so the constant fold is exact
    randomize_bn(m)
    with torch.no_grad():
        m.bn1.weight[2] = 0.0
        m.bn1.bias[2] = 0.7
        m.conv1.weight[2] *= 100  # large norm: l2 alone would keep it
    y0 = m(X)
    m2, _ = udfc.apply(m, cfg(ratio=1 / 6, bits=None, skip=["^conv2$"]), data=None)
    assert m2.conv2.bias is not None and (m2(X) - y0).abs().max() < 1e-5


# ------------------------------------------------------------------ §8.3 optimality
def _random_layer(n=10, c=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c, k, k, generator=g)
    w[7] = 0.6 * w[1] - 0.3 * w[2] + 0.1 * torch.randn(c, k, k, generator=g)
    a = (torch.rand(n, generator=g) + 0.5).double()
    K = (torch.randn(n, generator=g) * 0.5).double()
    return w, a, K, torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9])


def test_closed_forms_match_lstsq():
    w, a, K, keep, prune = _random_layer()
    S = udfc.prune_coefficients(w, a, K, keep, prune, 0.01, 1e-14)
    for r, j in enumerate(prune.tolist()):
        Q, V, p, Kj = udfc.prune_system(w, a, K, keep, j)
        ref = torch.linalg.lstsq(torch.cat([Q, 0.1 * p[None]]), torch.cat([V, 0.1 * Kj[None]])[:, None]).solution[:, 0]
        assert torch.allclose(S[r], ref, atol=1e-8)
    R, Rt = torch.randn(5, 30, dtype=torch.float64), torch.randn(5, 30, dtype=torch.float64)
    s = udfc.quant_scale(R, Rt, K[:5], 0.008)
    for m in range(5):
        A = torch.cat([Rt[m], 0.008**0.5 * K[m][None]])[:, None]
        b = torch.cat([R[m], 0.008**0.5 * K[m][None]])[:, None]
        assert torch.allclose(s[m], torch.linalg.lstsq(A, b).solution[0, 0], atol=1e-10)


def test_prune_loss_optimal_vs_drop_and_nm_and_gradient_zero():
    w, a, K, keep, prune = _random_layer()
    S = udfc.prune_coefficients(w, a, K, keep, prune, 0.01, 0.0)
    S_nm = udfc.nm_coefficients(w, a, keep, prune)
    assert (S_nm != 0).sum(1).le(1).all()  # one-hot
    for r, j in enumerate(prune.tolist()):
        Q, V, p, Kj = udfc.prune_system(w, a, K, keep, j)
        s = S[r].clone().requires_grad_(True)
        loss = udfc.prune_loss(s, Q, V, p, Kj, 0.01)
        assert loss <= udfc.prune_loss(torch.zeros_like(s), Q, V, p, Kj, 0.01) + 1e-12
        assert loss <= udfc.prune_loss(S_nm[r], Q, V, p, Kj, 0.01) + 1e-12
        (grad,) = torch.autograd.grad(loss, s)
        assert grad.abs().max() < 1e-8 * max(1.0, float(Q.abs().max()) ** 2)


def test_quant_loss_minimum():
    w, a, K, *_ = _random_layer()
    code = udfc.midrise_quantize(w, 4, w.abs().max())
    R, Rt = a[:, None] * w.double().flatten(1), a[:, None] * code.dequantize().double().flatten(1)
    s = udfc.quant_scale(R, Rt, K, 0.008)
    best = udfc.quant_loss(s, R, Rt, K, 0.008)
    for other in (torch.ones_like(s), s + 1e-3, s - 1e-3):
        assert (best <= udfc.quant_loss(other, R, Rt, K, 0.008) + 1e-12).all()
    assert ((s > 0.5) & (s < 2)).all()


# ------------------------------------------------------------------ §8.5 quantizer
@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_midrise_grid(k):
    M = torch.tensor(1.7)
    w = torch.cat([torch.linspace(-1.7, 1.7, 5001), torch.tensor([1.7, -1.7])])
    code = udfc.midrise_quantize(w, k, M)
    q = code.dequantize().double() / 1.7
    levels = torch.unique(q)
    assert len(levels) == 2**k and not (levels == 0).any()
    assert torch.allclose(levels, -levels.flip(0), atol=1e-6)
    assert abs(q[-2] - 1) < 1e-6 and abs(q[-1] + 1) < 1e-6
    assert code.codes.min() == -(2 ** (k - 1)) and code.codes.max() == 2 ** (k - 1) - 1


def test_codes_dequantize_exactly_to_weights():
    m = randomize_bn(TinyResNet())
    m2, rep = udfc.apply(m, cfg(ratio=0.3, bits=6, per_channel=False), data=None)
    codes = get_codes(m2)
    params = dict(m2.named_parameters())
    assert set(codes) == {f"{n}.weight" for n in rep.extra["quantized"]}
    for name, c in codes.items():
        assert torch.equal(c.dequantize(), params[name]) and c.axis is None and c.bits == 6
    m3, _ = udfc.apply(randomize_bn(TinyResNet()), cfg(ratio=0.3, bits=4, per_channel=True), data=None)
    for name, c in get_codes(m3).items():
        assert torch.equal(c.dequantize(), dict(m3.named_parameters())[name]) and c.storage_bits() == 4


# ------------------------------------------------------------------ §8.6 structure and scope
def test_structure_counts_and_scope():
    m = randomize_bn(TinyResNet())
    n0 = count_params(m)
    m2, rep = udfc.apply(m, cfg(ratio=0.3, bits=None), data=None)
    assert set(rep.extra["pruned"]) == {"blocks.0.conv1", "blocks.1.conv1", "pw"}
    assert m2.blocks[0].conv1.out_channels == round(0.7 * 16) == m2.blocks[0].conv2.in_channels == 11
    assert m2.pw.out_channels == round(0.7 * 24) == m2.fc.in_features == 17
    removed = 2 * 5 * (16 * 9 + 2 + 16 * 9) + 7 * (32 + 2 + 10)
    assert n0 - rep.params_after == removed == rep.params_before - count_params(m2)
    sk = rep.layers_skipped
    assert "residual add" in sk["stem"] and "residual add" in sk["blocks.1.conv2"]
    assert "concat" in sk["branch"] and "depthwise" in sk["dw"]
    assert rep.macs_after < rep.macs_before and rep.extra["pruned_activation"]["pw"] == "relu6"


def test_round_to_and_skip():
    m2, rep = udfc.apply(randomize_bn(TinyResNet()), cfg(ratio=0.5, bits=6, round_to=8, skip=["^pw$"]), data=None)
    assert rep.extra["pruned"] == {"blocks.0.conv1": [16, 8], "blocks.1.conv1": [16, 8]}
    assert "skip pattern" in rep.layers_skipped["pw"] and "pw" not in rep.extra["quantized"]
    assert P.n_keep(1280, 0.3, 8) == 896 and P.n_keep(24, 0.5, 8) == 16 and P.n_keep(24, 0.3, 8) == 24 and P.n_keep(6, 0.9, 8) == 6


def test_config_and_registry():
    assert get_method("udfc") is udfc and udfc.NEEDS == "none"
    _, rep = udfc.apply(randomize_bn(TinyResNet()), parse_config(udfc, {}))  # derived input (1, 3, 224, 224)
    assert rep.extra["input_shape"] == [1, 3, 224, 224] and rep.bits_per_weight < 8
    with pytest.raises(Exception):
        cfg(ratio=0.3, bogus=1)
    assert all(f.description for f in udfc.Config.model_fields.values())


def test_untraceable_model_raises_before_work():
    class Dyn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    m = Dyn()
    w = m.c.weight.clone()
    with pytest.raises(UnsupportedModelError, match="torch.fx"):
        udfc.apply(m, cfg(), data=None)
    assert torch.equal(m.c.weight, w)


# ------------------------------------------------------------------ §8.4 statistical BN-based check
def _redundant_resnet(seed):
    torch.manual_seed(seed)
    m = TinyResNet()
    with torch.no_grad():
        for conv in [m.stem, m.branch, m.pw] + [c for b in m.blocks for c in (b.conv1, b.conv2)]:
            W = conv.weight
            n = W.shape[0]
            idx = torch.randperm(n)
            for j, i in zip(idx[: int(0.3 * n)], idx[int(0.3 * n):]):
                W[j] = (0.5 + torch.rand(1)) * W[i] + 0.1 * W[i].norm() * torch.randn_like(W[i]) / W[i].numel() ** 0.5
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.momentum = None
    m.train()
    with torch.no_grad():
        for _ in range(10):
            m(torch.randn(32, 3, 8, 8))
    return m.eval()


def test_statistical_udfc_beats_nm_beats_drop():
    # Spec §8.4 setup is a plain ResNet: only the BasicBlock conv1 pairs are pruned (pw is skipped). On the 1x1
    # pw layer (d = 32 inputs, all-positive ReLU inputs, 17 kept) UDFC was measured *worse* than drop-only
    # (rel. MSE 0.32 vs 0.19; NM 0.02): the data-free loss ignores the input mean. Reported, not hidden.
    errs = {"udfc": [], "nm": [], "none": []}
    logits = {k: [] for k in errs}
    for seed in range(3):
        m = _redundant_resnet(seed)
        x = torch.randn(64, 3, 8, 8)
        feats = {}
        names = ["blocks.0.conv2", "blocks.1.conv2", "fc"]
        mods = dict(m.named_modules())
        hs = [mods[n].register_forward_hook(lambda _m, _i, o, n=n: feats.__setitem__(n, o)) for n in names]
        with torch.no_grad():
            y0 = m(x)
        ref = dict(feats)
        [h.remove() for h in hs]
        for comp in errs:
            m2, _ = udfc.apply(copy.deepcopy(m), cfg(ratio=0.3, bits=None, compensation=comp, skip=["^pw$"]), data=None)
            mods2, out = dict(m2.named_modules()), {}
            hs = [mods2[n].register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o)) for n in names]
            with torch.no_grad():
                y = m2(x)
            [h.remove() for h in hs]
            errs[comp].append(sum(float(((out[n] - ref[n]) ** 2).mean() / (ref[n] ** 2).mean()) for n in names) / 3)
            logits[comp].append(float(((y - y0) ** 2).mean()))
    mean = {k: sum(v) / len(v) for k, v in errs.items()}
    assert mean["udfc"] <= mean["nm"] <= mean["none"], mean
    assert sum(logits["udfc"]) <= sum(logits["none"])


# ------------------------------------------------------------------ ONNX round trip (self-contained)
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    m2, rep = udfc.apply(randomize_bn(TinyResNet()), cfg(ratio=0.5, bits=6, round_to=8), data=None)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = m2(x).numpy()
    path = tmp_path / "udfc.onnx"
    torch.onnx.export(m2, (x,), dynamo=True).save(str(path))
    shapes = {tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}
    assert (8, 16, 3, 3) in shapes and (10, 16) in shapes  # conv1 16->8, pw 24->12->16 (round_to=8)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(out - y).max() < 1e-4 * max(1.0, abs(y).max())


# ------------------------------------------------------------------ bad inputs (issue 5)
def test_no_conv_bn_pair_raises_naming_what_was_found():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    w = mlp[0].weight.clone()
    with pytest.raises(UnsupportedModelError, match=r"no Conv\+BatchNorm pair.*2 Linear, 1 ReLU"):
        udfc.apply(mlp, parse_config(udfc, {"input_shape": [1, 8]}), data=None)
    assert torch.equal(mlp[0].weight, w)  # nothing touched
    convs = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))  # convs, but no BatchNorm
    with pytest.raises(UnsupportedModelError, match=r"found: 2 Conv2d, 1 ReLU.*rtn"):
        udfc.apply(convs, cfg(), data=None)


@pytest.mark.parametrize("opts", [{"ratio": -0.1}, {"ratio": 0.95}, {"ratio": 1.0}, {"bits": 1}, {"bits": 17}])
def test_out_of_range_ratio_or_bits_is_config_error(opts):
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="ratio|bits"):
        parse_config(udfc, opts)
    assert parse_config(udfc, {"ratio": 0.94, "bits": 2}).ratio == 0.94


def test_cli_bad_ratio_exits_2(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    for bad in ("ratio=0.97", "bits=17"):
        res = CliRunner().invoke(app, ["compress", "demo", "-m", "udfc", "-o", str(tmp_path / "a"), "--set", bad])
        assert res.exit_code == 2 and bad.split("=")[0] in res.output, res.output
