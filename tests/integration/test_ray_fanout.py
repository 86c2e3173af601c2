"""executor=ray for the long single-model steps (issue 20): OPTIN's per-unit scoring and LLM-FP4's per-layer search
as Ray tasks on a real local cluster (a head and a second node process, 1 CPU each: 2 workers), equal bit for bit
to the local run; and the executor options' one-line errors (these run without Ray too)."""
from __future__ import annotations

import copy
import importlib.util
import shutil
import sys
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.integration._ray import ray_default_dir  # noqa: E402
from edgekit.data import DataSource  # noqa: E402
from edgekit.errors import ConfigError  # noqa: E402
from edgekit.methods import get_method, parse_config  # noqa: E402
from edgekit.methods.optin import heads as H  # noqa: E402
from edgekit.quant import act_records, get_codes  # noqa: E402

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install 'edgekit[ray]')")


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + a second node process (1 CPU), this host only, own temp dir, joined once by this process (the
    methods' fanout.pool then uses that connection: cluster() joins only when Ray is not initialized); shut down
    afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="ekfan", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ray_default_dir()  # Cluster() writes the head's address into Ray's default temp dir, which it does not create
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "temp_dir": tmp, "object_store_memory": 80 * 2**20})
        c.add_node(num_cpus=1, object_store_memory=80 * 2**20)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)  # one driver connection: workers stay warm across tests
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if c is not None:
            c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _bert(layers: int = 3) -> torch.nn.Module:
    """A tiny BERT encoder with weights large enough that every unit matters (distinct scores)."""
    torch.manual_seed(0)
    m = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, hidden_dropout_prob=0.0)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15, generator=torch.Generator().manual_seed(p.numel()))
    return m


def _ids(n: int = 6, t: int = 12) -> DataSource:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    mask[1, 5:] = 0
    return DataSource(tensors=[ids, mask])


OPTIN = {"cache": False, "progress": False, "samples": 6, "unit_batch": 8, "flops_keep": 0.6}


@needs_ray
def test_optin_scores_and_masks_on_ray_equal_local(cluster):
    optin = get_method("optin")
    model, data = _bert(), _ids()
    local = parse_config(optin, OPTIN)
    on_ray = parse_config(optin, {**OPTIN, "executor": "ray", "workers": 2, "ray_address": cluster.address})
    arch = H.find_arch(model)
    ids, mask = optin.calibration(model, arch, data, local)
    raw_l, _ = optin.raw_scores(model, arch, ids, mask, local)
    info: dict = {}
    raw_r, hit = optin.raw_scores(model, arch, ids, mask, on_ray, info)
    assert not hit and info["executor"] == "ray" and info["slots"] == 2
    # 3 layers x (1 head chunk + 16 neuron chunks of 8): dealt into 4 tasks per slot, on both nodes
    assert info["tasks"] == 8 and info["nodes"] == 2, info
    for k in ("head_md", "head_kd", "neuron_md", "neuron_kd"):
        assert len(raw_r[k]) == len(raw_l[k]) == 3
        for a, b in zip(raw_l[k], raw_r[k]):
            assert torch.equal(a, b), k  # bit for bit
    for k in ("head_md", "head_kd", "neuron_md"):  # every unit's score is its own: a misplaced chunk shows
        flat = torch.cat(raw_l[k])
        assert (flat > 0).all() and len(set(flat.tolist())) == len(flat), k
    # through the method's interface: the same scores (digest), masks and slimmed weights
    m_l, rep_l = optin.apply(copy.deepcopy(model), local, data)
    m_r, rep_r = optin.apply(copy.deepcopy(model), on_ray, data)
    assert rep_r.extra["raw_scores_sha256"] == rep_l.extra["raw_scores_sha256"]
    assert rep_r.extra["fan_out"]["executor"] == "ray" and rep_l.extra["fan_out"] == {"executor": "local"}
    assert rep_r.extra["units_per_layer"] == rep_l.extra["units_per_layer"] != [4, 4, 4]
    assert rep_r.extra["neurons_per_layer"] == rep_l.extra["neurons_per_layer"]
    sd_l, sd_r = m_l.state_dict(), m_r.state_dict()
    assert sd_l.keys() == sd_r.keys() and all(torch.equal(sd_l[k], sd_r[k]) for k in sd_l)


@needs_ray
def test_llm_fp4_formats_biases_and_codes_on_ray_equal_local(cluster):
    fp4 = get_method("llm_fp4")
    model = _bert(layers=2)
    data = DataSource(tensors=[torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(1))])
    # seq_len only sizes the capture budget here (token-id data): one layer per capture group, so searches run
    # while later layers are captured
    opts = {"progress": False, "n_candidates": 8, "search_tokens": 64, "cache_mb": 8, "seq_len": 4096}
    q_l, rep_l = fp4.apply(copy.deepcopy(model), parse_config(fp4, opts), data)
    q_r, rep_r = fp4.apply(copy.deepcopy(model), parse_config(fp4, {**opts, "executor": "ray", "workers": 2,
                                                                    "ray_address": cluster.address}), data)
    lay_l, lay_r = rep_l.extra["layers"], rep_r.extra["layers"]
    assert list(lay_r) == list(lay_l) and len(lay_l) == 16  # 13 linears + 3 embedding tables, in the local order
    assert lay_r == lay_l  # formats, MSEs (floats, compared exactly)
    fan = rep_r.extra["fan_out"]
    assert fan["executor"] == "ray" and fan["tasks"] == 16 and fan["nodes"] == 2, fan
    c_l, c_r = get_codes(q_l), get_codes(q_r)
    assert c_l.keys() == c_r.keys() and len(c_l) == 16
    for n in c_l:  # codes and per-row units (the chosen biases)
        assert torch.equal(c_l[n].codes, c_r[n].codes) and torch.equal(c_l[n].scale, c_r[n].scale), n
    a_l, a_r = act_records(q_l), act_records(q_r)
    assert a_l.keys() == a_r.keys() and len(a_l) == 13
    for n in a_l:  # activation format, tensor bias, FPQ shifts
        assert a_l[n].fmt == a_r[n].fmt and torch.equal(a_l[n].unit, a_r[n].unit), n
        assert (a_l[n].shift is None) == (a_r[n].shift is None)
        assert a_l[n].shift is None or torch.equal(a_l[n].shift, a_r[n].shift), n
    sd_l, sd_r = q_l.state_dict(), q_r.state_dict()
    assert sd_l.keys() == sd_r.keys() and all(torch.equal(sd_l[k], sd_r[k]) for k in sd_l)


@pytest.mark.parametrize("method", ["optin", "llm_fp4"])
def test_executor_errors_are_one_line(method, monkeypatch):
    mod = get_method(method)
    base = {"progress": False}
    with pytest.raises(ConfigError, match="executor") as e:
        parse_config(mod, {**base, "executor": "dask"})
    assert "\n" not in str(e.value)
    data = _ids()
    for opts, msg in (({"workers": 2}, "need executor=ray"), ({"ray_address": "127.0.0.1:1"}, "need executor=ray"),
                      ({"executor": "ray", "device": "meta"}, "use device=cpu")):
        with pytest.raises(ConfigError, match=msg) as e:
            mod.apply(_bert(1), parse_config(mod, {**base, **opts}), data)
        assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'edgekit\[ray\]'") as e:
        mod.apply(_bert(1), parse_config(mod, {**base, "executor": "ray"}), data)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{method}: executor=ray needs Ray")
