"""UDFC: spec §8 checks on tiny models built here (data-free; no downloads), and issue 21: the default command is
never worse than RTN at the same bits on small depthwise-separable, residual and plain networks.

References are computed here from the spec's formulas or measured on data, never with the implementation's own
helpers (issue 13 §4)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import UnsupportedModelError
from edgekit.flops import count_params
from edgekit.methods import get_method, parse_config
from edgekit.methods.udfc import prune as P
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


def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec §2, written out here: a = γ/σ with σ = sqrt(var + eps), K = β − a·μ (+ a·b), float64."""
    a = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b = conv.bias.detach().double() if conv.bias is not None else 0.0
    return a, bn.bias.detach().double() + a * (b - bn.running_mean.double())


def plant(m: Pair, combos: dict[int, dict[int, float]]) -> Pair:
    """Make filter j a combination of kept filters so that its BN output is exactly Σ c_i · (BN output i)."""
    randomize_bn(m, 1)
    a, K = fold(m.conv1, m.bn1)
    with torch.no_grad():
        for j, cs in combos.items():
            m.bn1.weight[j] = 3.0 * float(torch.sqrt(m.bn1.running_var[j] + m.bn1.eps))  # a_j = 3: small planted norm
            a[j] = 3.0
            m.conv1.weight[j] = sum(c * a[i] / a[j] * m.conv1.weight[i] for i, c in cs.items()).float()
            Kj = sum(c * K[i] for i, c in cs.items())  # K_j = β_j − a_j μ_j
            m.bn1.bias[j] = float(Kj + a[j] * m.bn1.running_mean[j])
    norms = m.conv1.weight.detach().flatten(1).norm(dim=1)
    assert set(norms.argsort()[: len(combos)].tolist()) == set(combos)  # the criterion prunes the planted ones
    return m


def cbr(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1, act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), act())


class InvRes(nn.Module):
    """MobileNetV2 block: 1x1 expand ReLU6, 3x3 depthwise ReLU6, 1x1 linear project (no activation), residual add."""

    def __init__(self, cin: int, cout: int, stride: int, e: int = 3):
        super().__init__()
        h = cin * e
        self.expand, self.dw = cbr(cin, h, 1, act=nn.ReLU6), cbr(h, h, 3, stride, g=h, act=nn.ReLU6)
        self.project, self.res = cbr(h, cout, 1, act=nn.Identity), stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.res else y


class TinyMobile(nn.Module):
    """Depthwise-separable family: stem, four inverted residual blocks (two with an add), ReLU6 head, pool, fc. The
    last block's linear bottleneck feeds the head conv only (as Lite0's last project conv does)."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8, act=nn.ReLU6)
        self.blocks = nn.Sequential(InvRes(8, 8, 1), InvRes(8, 12, 2), InvRes(12, 12, 1), InvRes(12, 16, 1))
        self.head, self.fc = cbr(16, 32, 1, act=nn.ReLU6), nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1), 1))


class TinyVGG(nn.Module):
    """Plain family: conv-BN-ReLU x3 with max pools, flatten (16x2x2) into the classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), cbr(8, 8), nn.MaxPool2d(2), cbr(8, 16), nn.MaxPool2d(2))
        self.fc = nn.Linear(16 * 2 * 2, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic 5-class images: smooth class templates plus noise."""
    g = torch.Generator().manual_seed(1234)
    protos = F.avg_pool2d(torch.randn(5, 3, 10, 10, generator=g), 3, 1)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    return protos[y] + 1.2 * torch.randn(n, 3, 8, 8, generator=g), y


def calibrate(m: nn.Module, batches: int = 4) -> nn.Module:
    """BN running statistics = exact averages over task batches (train mode, momentum None), then eval."""
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.reset_running_stats()
            b.momentum = None
    m.train()
    with torch.no_grad():
        for i in range(batches):
            m(task(256, 500 + i)[0])
    return m.eval()


def family_net(cls, seed: int = 0) -> nn.Module:
    """Random conv weights, random BN affine (γ in [0.5, 1.5], β in [-0.5, 0.5]), BN statistics measured on the
    synthetic task: every layer's statistics describe the data it sees (training the Fashion networks of
    benchmarks/udfc.py would cost tens of seconds here)."""
    torch.manual_seed(seed)
    m = cls()
    g = torch.Generator().manual_seed(seed)
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.weight.data.uniform_(0.5, 1.5, generator=g)
            b.bias.data.uniform_(-0.5, 0.5, generator=g)
    return calibrate(m)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster on a busy machine and the same elsewhere."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    m2, rep = udfc.apply(copy.deepcopy(m), cfg(ratio=0.0, bits=16, gain=True), data=None)
    lo, hi = rep.extra["s_tilde_range"]
    assert 1 - 1e-4 < lo <= hi < 1 + 1e-4
    assert (m2(X) - y0).abs().max() <= 1e-3 * y0.abs().max()
    assert get_codes(m2) == {}  # > 8 bits: float only


# ------------------------------------------------------------------ §8.2 exact recovery
@pytest.mark.parametrize("eps_ridge", [0.0, 1e-13])
def test_exact_recovery_single_channel_relu(eps_ridge):
    m = plant(Pair(6, "relu"), {4: {1: 0.3}})
    y0 = m(X)
    a, K = fold(m.conv1, m.bn1)
    keep, prune = torch.tensor([0, 1, 2, 3, 5]), torch.tensor([4])
    S = udfc.prune_coefficients(m.conv1.weight, a, K, keep, prune, 0.01, eps_ridge)
    assert torch.allclose(S, torch.tensor([[0, 0.3, 0, 0, 0]], dtype=torch.float64), atol=1e-6)
    # the planted BN statistics describe no data, so the data-free mean correction is off: this checks ŝ alone
    m2, rep = udfc.apply(m, cfg(ratio=1 / 6, bits=None, eps_ridge=eps_ridge, skip=["^conv2$"], bias_correction=False,
                                prune_linear=True), data=None)
    assert rep.extra["pruned"]["conv1"] == [6, 5] and m2.conv1.out_channels == 5 and m2.conv2.in_channels == 5
    assert (m2(X) - y0).abs().max() < 1e-5


def test_exact_recovery_two_channels_identity():
    m = plant(Pair(7, "identity"), {5: {0: 0.2, 1: -0.1}, 6: {2: 0.15, 3: 0.1, 4: -0.05}})
    y0 = m(X)
    m2, rep = udfc.apply(m, cfg(ratio=2 / 7, bits=None, eps_ridge=1e-13, skip=["^conv2$"], bias_correction=False,
                                prune_linear=True), data=None)
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


def _spec_system(w, a, K, keep, j):
    """ℓp's (Q, V, p, K_j) written from spec §4: Q's column i is (a_i / a_j)·v(W_i), V = v(W_j), p = K[𝒦]."""
    W = w.double().flatten(1)
    Q = torch.stack([(a[i] / a[j]) * W[i] for i in keep.tolist()], dim=1)
    return Q, W[j], K[keep], K[j]


def _spec_lp(s, Q, V, p, Kj, alpha1=0.01):
    return ((V - Q @ s) ** 2).sum() + alpha1 * (Kj - p @ s) ** 2


def test_closed_forms_match_lstsq():
    w, a, K, keep, prune = _random_layer()
    S = udfc.prune_coefficients(w, a, K, keep, prune, 0.01, 1e-14)
    for r, j in enumerate(prune.tolist()):
        Q, V, p, Kj = _spec_system(w, a, K, keep, j)
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
        Q, V, p, Kj = _spec_system(w, a, K, keep, j)
        s = S[r].clone().requires_grad_(True)
        loss = _spec_lp(s, Q, V, p, Kj)
        assert loss <= _spec_lp(torch.zeros_like(s), Q, V, p, Kj) + 1e-12
        assert loss <= _spec_lp(S_nm[r], Q, V, p, Kj) + 1e-12
        (grad,) = torch.autograd.grad(loss, s)
        assert grad.abs().max() < 1e-8 * max(1.0, float(Q.abs().max()) ** 2)


def test_quant_gain_minimises_lq():
    w, a, K, *_ = _random_layer()
    code = udfc.midrise_quantize(w, 4, w.abs().max())
    R, Rt = a[:, None] * w.double().flatten(1), a[:, None] * code.dequantize().double().flatten(1)
    s = udfc.quant_scale(R, Rt, K, 0.008)
    lq = lambda t: ((R - t[:, None] * Rt) ** 2).sum(1) + 0.008 * (K - t * K) ** 2  # noqa: E731 - spec Eq. 14
    for other in (torch.ones_like(s), s + 1e-3, s - 1e-3):
        assert (lq(s) <= lq(other) + 1e-12).all()
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


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_midtread_grid_has_zero(k):
    M = torch.tensor([1.7, 0.3])
    w = torch.stack([torch.linspace(-1.7, 1.7, 5001), torch.linspace(-0.3, 0.3, 5001)])
    code = udfc.midtread_quantize(w, k, M)
    q = code.dequantize().double() / M[:, None].double()
    for row in q:
        levels = torch.unique(row)
        assert len(levels) == 2**k - 1 and (levels == 0).any()
        assert torch.allclose(levels, -levels.flip(0), atol=1e-6) and abs(levels.max() - 1) < 1e-6
    assert code.offset is None and code.axis == 0


def test_zero_weights_midrise_all_become_plus_half_step_midtread_keeps_them():
    """Issue 21's collapse mechanism: on the zero-free grid every exact zero lands on +M/(2^k-1), all the same sign;
    on the default grid zeros stay zero."""
    w = torch.tensor([[0.0, 0.0, 0.0, 0.9, -0.4], [0.0, 0.5, 0.0, -0.2, 0.0]])
    M = w.abs().amax(1)
    for k in (4, 6, 8):
        up = udfc.midrise_quantize(w, k, M).dequantize()[w == 0]
        assert torch.allclose(up, (M[:, None].expand_as(w) / (2**k - 1))[w == 0])  # +half step, never 0 or -
        assert (udfc.midtread_quantize(w, k, M).dequantize()[w == 0] == 0).all()


def test_codes_dequantize_exactly_to_weights():
    m = randomize_bn(TinyResNet())
    m2, rep = udfc.apply(m, cfg(ratio=0.3, bits=6, paper=True), data=None)  # per-tensor mid-rise
    codes = get_codes(m2)
    params = dict(m2.named_parameters())
    assert set(codes) == {f"{n}.weight" for n in rep.extra["quantized"]}
    for name, c in codes.items():
        assert torch.equal(c.dequantize(), params[name]) and c.axis is None and c.bits == 6
    for grid in ("midrise", "midtread"):
        m3, _ = udfc.apply(randomize_bn(TinyResNet()), cfg(ratio=0.3, bits=4, grid=grid), data=None)
        for name, c in get_codes(m3).items():
            assert torch.equal(c.dequantize(), dict(m3.named_parameters())[name]) and c.storage_bits() == 4
            assert c.axis == 0 and (c.offset is None) == (grid == "midtread")


# ------------------------------------------------------------------ §8.6 structure and scope
def test_structure_counts_and_scope():
    m = randomize_bn(TinyResNet())
    n0 = count_params(m)
    m2, rep = udfc.apply(m, cfg(ratio=0.3, bits=None), data=None)
    assert set(rep.extra["pruned"]) == {"blocks.0.conv1", "blocks.1.conv1", "pw"}
    assert m2.blocks[0].conv1.out_channels == round(0.7 * 16) == m2.blocks[0].conv2.in_channels == 11
    assert m2.pw.out_channels == round(0.7 * 24) == m2.fc.in_features == 17
    removed = 2 * 5 * (16 * 9 + 2 + 16 * 9) + 7 * (32 + 2 + 10)
    added = 2 * 16  # bias_correction: the pruned channels' mean goes into a new bias of each bias-free conv2
    assert n0 - rep.params_after == removed - added == rep.params_before - count_params(m2)
    assert m2.blocks[0].conv2.bias is not None and m2.blocks[0].conv2.bias.shape == (16,)
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
    paper = parse_config(udfc, {"paper": True, "per_channel": True})  # an explicit option wins over the preset
    assert (paper.grid, paper.gain, paper.bias_correction, paper.prune_linear, paper.per_channel) == \
        ("midrise", True, False, True, True)
    assert parse_config(udfc, {"paper": True}).per_channel is False


def test_recorded_input_is_the_given_one(tmp_path):
    """Issue 21: the report said 224 when 260 was given. The method uses the inputs it is handed; edgekit compress
    hands it the artifact's input spec."""
    _, rep = udfc.apply(randomize_bn(TinyResNet()), parse_config(udfc, {}), example_inputs=[torch.randn(2, 3, 13, 13)])
    assert rep.extra["input_shape"] == [2, 3, 13, 13]
    from edgekit import api
    from edgekit.artifact import read_manifest

    art = api.compress("demo", "udfc", {"bits": 8}, tmp_path / "a", input_shape="1x1x12x12")
    man = read_manifest(art)
    assert man["method"]["report"]["extra"]["input_shape"] == [1, 1, 12, 12] == man["inputs"][0]["shape"]


def test_linear_bottlenecks_not_pruned_by_default():
    m = TinyMobile()
    calibrate(m, 8)
    _, rep = udfc.apply(copy.deepcopy(m), cfg(ratio=0.5, bits=None), data=None)
    assert "blocks.3.project.0" not in rep.extra["pruned"] and "head.0" in rep.extra["pruned"]
    assert "linear bottleneck" in rep.layers_skipped["blocks.3.project.0"]
    assert "residual add" in rep.layers_skipped["blocks.1.project.0"]
    _, rep = udfc.apply(copy.deepcopy(m), cfg(ratio=0.5, bits=None, prune_linear=True), data=None)
    assert rep.extra["pruned"]["blocks.3.project.0"] == [16, 8]


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


# ------------------------------------------------------------------ issue 21: the default is not worse than RTN
FAMILIES = {"depthwise": TinyMobile, "residual": TinyResNet, "plain": TinyVGG}
V1 = {"per_channel": True, "grid": "midrise", "gain": True, "bias_correction": False}  # the defaults before issue 21


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return {name: family_net(cls) for name, cls in FAMILIES.items()}


def sparse(m: nn.Module, frac: float = 0.3) -> nn.Module:
    """A sparse checkpoint: the smallest `frac` of each output channel's weights exactly 0, BN re-estimated."""
    m = copy.deepcopy(m)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight[0].numel() > 9:
                w = mod.weight
                thr = w.abs().flatten(1).kthvalue(max(1, int(frac * w[0].numel())), dim=1).values
                w[w.abs() <= thr.view(-1, *[1] * (w.dim() - 1))] = 0
    return calibrate(m)


def fidelity(m: nn.Module, ref: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, 1 - mean cosine) of m's logits with ref's."""
    with torch.no_grad():
        y0, y = ref(x), m(x)
    return float((y.argmax(1) == y0.argmax(1)).float().mean()), 1 - float(F.cosine_similarity(y, y0, dim=1).mean())


def quantized(m: nn.Module, bits: int, opts: dict | None = None) -> nn.Module:
    """RTN (opts None) or udfc with `opts` through the methods' public entry points."""
    if opts is None:
        rtn = get_method("rtn")
        return rtn.apply(copy.deepcopy(m), parse_config(rtn, {"bits": bits}))[0]
    return udfc.apply(copy.deepcopy(m), parse_config(udfc, {"bits": bits, **opts}),
                      example_inputs=[torch.zeros(1, 3, 8, 8)])[0]


def close_to_rtn(u: tuple[float, float], r: tuple[float, float]) -> bool:
    """The stated margin: agreement at most 0.01 below RTN's, 1 - cosine at most 1.25x RTN's + 1e-5."""
    return u[0] >= r[0] - 0.01 and u[1] <= 1.25 * r[1] + 1e-5


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("bits", [8, 6])
def test_default_udfc_not_worse_than_rtn(nets, family, bits):
    x = task(512, 9000)[0]  # held out: training and BN statistics used other seeds
    for name, m in (("dense", nets[family]), ("sparse", sparse(nets[family]))):
        r, u = fidelity(quantized(m, bits), m, x), fidelity(quantized(m, bits, {}), m, x)
        assert close_to_rtn(u, r), (family, bits, name, "udfc", u, "rtn", r)


def test_the_rtn_check_fails_the_old_defaults(nets):
    """The same check rejects the pre-issue-21 defaults (mid-rise grid + s̃, no bias correction) on every family's
    sparse checkpoint at W6: exact zeros all go to +half a step."""
    x = task(512, 9000)[0]
    for family in FAMILIES:
        m = sparse(nets[family])
        r, v = fidelity(quantized(m, 6), m, x), fidelity(quantized(m, 6, V1), m, x)
        assert not close_to_rtn(v, r), (family, v, r)


def test_bias_correction_keeps_the_measured_mean():
    """conv3x3 (no padding) -> BN -> ReLU -> conv1x1 -> BN on Gaussian input: the data-free mean of the 1x1 conv's
    input is exact here. After 3-bit quantization the measured mean of the last BN output stays at FP32's with bias
    correction and moves without it."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False),
                      nn.BatchNorm2d(8))
    for b in (m[1], m[4]):
        b.momentum = None
        nn.init.uniform_(b.weight, 0.5, 1.5)
        nn.init.uniform_(b.bias, -0.5, 0.5)
    m.train()
    with torch.no_grad():
        m(torch.randn(4096, 3, 6, 6))
    m.eval()
    x = torch.randn(4096, 3, 6, 6)
    with torch.no_grad():
        mean0 = m(x).mean((0, 2, 3))
        shift = {bc: (quantized(m, 3, {"bias_correction": bc})(x).mean((0, 2, 3)) - mean0).abs().max()
                 for bc in (True, False)}
    assert shift[True] < 0.25 * shift[False] and shift[True] < 0.05, shift


def test_channel_statistics_match_data():
    """The data-free per-channel means (BN -> N(β, γ²), activations by quadrature, add, concat, pool) against the
    means measured on the data the BN statistics came from."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = cbr(3, 6, 1, act=nn.SiLU)
            self.b = cbr(6, 6, 1, act=nn.Identity)
            self.c = cbr(6, 4, 1, act=nn.ReLU6)

        def forward(self, x):
            y = self.a(x)
            z = torch.cat([y + self.b(y), self.c(y)], 1)
            return F.avg_pool2d(z, 2)

    torch.manual_seed(0)
    m = Net()
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.momentum = None
            nn.init.uniform_(b.weight, 0.5, 2.0)
            nn.init.uniform_(b.bias, -1.0, 3.0)
    x = torch.randn(2048, 3, 4, 4)
    m.train()
    with torch.no_grad():
        m(x)
    m.eval()
    gm = P.trace(m)
    P.propagate_shapes(gm, [x[:1]])
    stats = {n.name: v for n, v in P.channel_stats(m, gm).items() if v is not None}
    measured = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                measured[n.name] = out.mean((0, 2, 3)).double()
            return out

    with torch.no_grad():
        Rec(gm).run(x)
    for name in ("a_2", "add", "c_2", "cat", "avg_pool2d"):
        assert name in stats, sorted(stats)
        assert torch.allclose(stats[name][0], measured[name], atol=0.05), (name, stats[name][0], measured[name])


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
