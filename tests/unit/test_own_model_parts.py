"""Parts of issue 21 without a CLI run: --arch by file path and with arguments, the comma --input-shape mistake,
bench --set routing, compress-time fidelity, re-loading an artifact's source, ImageFolder labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ConfigError, ModelLoadError
from edgekit.factory import build_from_factory, import_factory, is_factory_ref
from edgekit.model_io import SourceOptions, load_model, parse_input_shape

NETS = '''
import os
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(4, width)

    @classmethod
    def from_name(cls, name):
        return cls({"small": 2, "big": 6}[name])

    def forward(self, x):
        return self.fc(x)

def build(width, bias=True):
    torch.manual_seed(0)
    return Net(width)
'''


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


def test_factory_by_file_path_with_arguments(nets: Path) -> None:
    assert is_factory_ref(f"{nets}:build") and is_factory_ref("pkg.mod:f") and not is_factory_ref("demo")
    assert build_from_factory(f"{nets}:build", {"width": 3}).fc.out_features == 3
    assert build_from_factory(f"{nets}:Net.from_name", {"name": "big"}).fc.out_features == 6
    with pytest.raises(ConfigError, match=r"needs argument width; pass it with --arch-args width=VALUE"):
        build_from_factory(f"{nets}:build")
    with pytest.raises(ConfigError, match=r"--arch-args width=VALUE \(it takes no wdth\)"):
        build_from_factory(f"{nets}:build", {"wdth": 3})
    with pytest.raises(ConfigError, match="has no 'nope'"):
        import_factory(f"{nets}:nope")
    with pytest.raises(ConfigError, match="does not exist"):
        import_factory(f"{nets.with_name('missing.py')}:build")


def test_dangerous_names_refused_through_a_file_too(nets: Path) -> None:
    with pytest.raises(ConfigError, match="run commands"):
        import_factory(f"{nets}:os.system")  # the file imports os: same function as os:system
    with pytest.raises(ConfigError, match="run commands"):
        import_factory("subprocess:run")


def test_factory_as_source_and_state_dict_with_args(nets: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    m = load_model(f"{nets}:build", arch_args={"width": 2})
    assert m.kind == "factory" and m.module.fc.out_features == 2
    with pytest.raises(ConfigError, match="is a factory already"):
        load_model(f"{nets}:build", arch=f"{nets}:build")
    save_file(build_from_factory(f"{nets}:build", {"width": 5}).state_dict(), str(tmp_path / "w.safetensors"))
    opts = SourceOptions(arch=f"{nets}:build", arch_args={"width": 5})
    assert opts.load(tmp_path / "w.safetensors").kind == "state_dict"
    with pytest.raises(ConfigError, match="pass --arch"):
        load_model(tmp_path / "w.safetensors", arch_args={"width": 5})


def test_comma_separated_shape_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"write 1x3x224x224\), commas separate inputs"):
        parse_input_shape("1,3,224,224")
    assert [s.shape for s in parse_input_shape("1x3,1x4:int64")] == [[1, 3], [1, 4]]


def test_arch_args_errors_name_the_flag() -> None:
    from edgekit.cli_common import parse_sets

    assert parse_sets(["width=8", "name=big"], "--arch-args") == {"width": 8, "name": "big"}
    with pytest.raises(ConfigError, match="--arch-args 'width' is not key=value"):
        parse_sets(["width"], "--arch-args")


def test_bench_set_routing() -> None:
    from edgekit.bench import method_options_from_sets

    got = method_options_from_sets(["rtn", "udfc"], {"bits": 6, "udfc.bits": 8, "ratio": 0.2})
    assert got == {"rtn": {"bits": 6}, "udfc": {"bits": 8, "ratio": 0.2}}
    with pytest.raises(ConfigError, match="no benched method"):
        method_options_from_sets(["rtn"], {"ratio": 0.2})
    with pytest.raises(ConfigError, match="not among the benched methods"):
        method_options_from_sets(["rtn"], {"udfc.ratio": 0.2})
    with pytest.raises(ConfigError, match="has no option 'nope'"):
        method_options_from_sets(["rtn"], {"rtn.nope": 1})


class _FixedBatch(nn.Module):
    """Refuses any batch but 1 (like an exported program with a static batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == 1
        return self.fc(x)


def test_fidelity_figures_fallback_and_collapse() -> None:
    import copy

    from edgekit import fidelity
    from edgekit.model_io import InputSpec

    torch.manual_seed(0)
    m = _FixedBatch().eval()
    specs = [InputSpec("input", [1, 8])]
    inputs, where = fidelity.held_out_inputs(specs, None, 32)
    assert len(inputs) == 32 and where == "32 seeded example inputs"
    inputs, ref = fidelity.source_outputs(m, inputs)  # batching fails: one by one
    same = fidelity.measure(m, inputs, ref, where, min_fidelity=0.9)
    assert same["value"] == 1.0 and same["below_threshold"] == [] and same["failed"] is False
    broken = copy.deepcopy(m)
    with torch.no_grad():
        broken.fc.weight.mul_(-1)
    bad = fidelity.measure(broken, inputs, ref, where, min_fidelity=0.9)
    assert bad["metric"] == "top1_agreement" and bad["value"] < 0.5 and bad["failed"] is True
    assert bad["below_threshold"] and "top1 agreement" in bad["below_threshold"][0]
    with torch.no_grad():
        broken.fc.bias.fill_(float("nan"))
    nan = fidelity.measure(broken, inputs, ref, where)
    assert nan["value"] is None and nan["outputs"]["output"]["non_finite"] and nan["below_threshold"]
    assert fidelity.sample_count(100) == fidelity.MAX_SAMPLES and fidelity.sample_count(int(1e12)) == 16
    with pytest.raises(ConfigError, match="between 0 and 1"):
        fidelity.check_min_fidelity(float("nan"))


def test_fidelity_reads_the_users_data_and_batches() -> None:
    from edgekit import fidelity
    from edgekit.data import DataSource
    from edgekit.model_io import InputSpec

    specs = [InputSpec("input", [1, 8])]
    data = DataSource([torch.arange(40, dtype=torch.float32).reshape(5, 8)], source="d.npz")
    inputs, where = fidelity.held_out_inputs(specs, data, 3)
    assert where == "last 3 samples of d.npz" and [float(x[0][0, 0]) for x in inputs] == [16.0, 24.0, 32.0]
    seen = []

    class Count(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return super().forward(x)

    outs = fidelity.run_all(Count(8, 3).eval(), inputs)
    assert seen == [3] and len(outs) == 3 and outs[0][0].shape == (1, 3)
    wrong = DataSource([torch.zeros(4, 9)], source="w.npz")
    assert "does not match the input spec" in fidelity.held_out_inputs(specs, wrong, 2)[1]


def test_reload_source_checks_checksum_arch_and_presence(nets: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from edgekit.source import reload_source, root_source, source_info

    w = tmp_path / "w.safetensors"
    save_file(build_from_factory(f"{nets}:build", {"width": 2}).state_dict(), str(w))
    opts = SourceOptions(arch=f"{nets}:build", arch_args={"width": 2})
    info = source_info(opts.load(w), opts)
    assert info["arch_args"] == {"width": 2} and info["abs_path"] == str(w.resolve())
    with pytest.raises(ConfigError, match="pass --arch"):
        reload_source(info)  # a manifest never chooses the code that is run
    got = reload_source(info, SourceOptions(arch=f"{nets}:build"))  # recorded args reused for the same --arch
    assert got.module.fc.out_features == 2
    chained = {"kind": "artifact", "path": "a", "origin": info}
    assert root_source(chained) is info
    save_file({k: v + 1 for k, v in got.module.state_dict().items()}, str(w))
    with pytest.raises(ModelLoadError, match="changed since the artifact was made"):
        reload_source(chained, SourceOptions(arch=f"{nets}:build"))
    w.unlink()
    with pytest.raises(ModelLoadError, match="is gone"):
        reload_source(info, SourceOptions(arch=f"{nets}:build"))


def test_image_folder_labels(tmp_path: Path) -> None:
    from PIL import Image

    from edgekit.eval.image_folder import Config, list_images, preprocess

    for c in ("207", "3"):
        (tmp_path / "num" / c).mkdir(parents=True)
        Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "num" / c / "a.png")
    paths, labels, classes = list_images(tmp_path / "num")
    assert classes == ["207", "3"] and labels.tolist() == [207, 3]  # integer folder names are class indices
    x = preprocess(paths, 3, 6, 7, Config(mean=[0.5], std=[0.5]))
    assert x.shape == (2, 3, 6, 7) and np.allclose(x[:, 0], 1.0) and np.allclose(x[:, 1], -1.0)
    Image.new("RGB", (5, 4)).save(tmp_path / "num" / "loose.png")
    with pytest.raises(ConfigError, match="both directly and in class folders"):
        list_images(tmp_path / "num")


def test_console_says_float_weight_fallback_and_collapse(capsys: pytest.CaptureFixture) -> None:
    from edgekit.cli import _print_fidelity

    man = {"exports": {"tflite": {"weight_storage": {"weights": "float", "reason": "integer weights did not "
                                                     "reproduce the model: cosine 0.9"}},
                       "onnxruntime": {}},
           "fidelity": {"inputs": "16 seeded example inputs", "samples": 16, "metric": "cosine", "value": 0.5,
                        "outputs": {"output": {"cosine": 0.5, "metric": "cosine"}},
                        "thresholds": {"cosine": 0.99, "top1_agreement": 0.9},
                        "below_threshold": ["output cosine 0.5"], "min_fidelity": 0.9, "failed": True}}
    assert _print_fidelity(man) is True
    out = capsys.readouterr().out
    assert "tflite: the file keeps float weights" in out and "cosine 0.9" in out
    assert "WARNING: the compressed model departs from its source: output cosine 0.5" in out
    assert "fidelity failed" in out and "onnxruntime" not in out


def test_fidelity_tokenizes_the_users_text(tmp_path):
    """--data text for a model fed input_ids: held-out inputs are token windows of that text (from its end), not
    random ids (random ids are not text: issue 13)."""
    from edgekit.data import DataSource
    from edgekit.fidelity import held_out_inputs
    from edgekit.model_io import InputSpec, load_model
    from tests.unit._tiny_llm import TEXT, tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "llama")
    loaded = load_model(folder)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = " ".join(TEXT * 4)
    specs = [InputSpec("input_ids", [1, 16], "int64", high=320), InputSpec("attention_mask", [1, 16], "int64")]
    got, where = held_out_inputs(specs, DataSource(texts=[text]), 3, loaded.module)
    assert "token windows" in where and len(got) == 3
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert got[-1][0].tolist()[0] == ids[-16:] and bool((got[-1][1] == 1).all())
    rand, where = held_out_inputs(specs, DataSource(texts=[text]), 3, None)  # no model: no tokenizer
    assert "seeded" in where


class _Pooled(nn.Module):
    """A user's sentence encoder: a Hugging Face base model, mean-pooled to [batch, hidden]."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids).last_hidden_state.mean(1)


def _tiny_bert_cfg():
    transformers = pytest.importorskip("transformers")
    return transformers, transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32,
                                                 max_position_embeddings=32, num_labels=5)


def test_fidelity_role_rule() -> None:
    """Embedding models (an HF base model, no task head) are judged by cosine, never by the argmax of a vector;
    HF task heads and plain nets stay classifiers; --fidelity-metric overrides; a bad choice is one line."""
    import copy

    from edgekit import fidelity

    transformers, cfg = _tiny_bert_cfg()
    torch.manual_seed(0)
    enc = _Pooled(transformers.BertModel(cfg)).eval()
    assert fidelity.model_role(enc) == "embedding"
    assert fidelity.model_role(transformers.BertForSequenceClassification(cfg)) == "classifier"
    assert fidelity.model_role(nn.Sequential(nn.Linear(4, 3))) == "classifier"
    assert fidelity.model_role(enc, "top1") == "classifier" and fidelity.model_role(nn.Linear(2, 2), "cosine") == \
        "embedding"
    with pytest.raises(ConfigError, match="--fidelity-metric 'x': choose one of auto, top1, cosine"):
        fidelity.model_role(enc, "x")
    inputs = [(torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(i)),) for i in range(16)]
    inputs, ref = fidelity.source_outputs(enc, inputs)
    noisy = copy.deepcopy(enc)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn_like(p) * 0.003)
    emb = fidelity.measure(noisy, inputs, ref, "x", role="embedding")
    assert emb["metric"] == "cosine" and "top1_agreement" not in emb["outputs"]["output"]
    assert 0.9 < emb["value"] < 1.0 and emb["role"] == "embedding"
    cls = fidelity.measure(noisy, inputs, ref, "x", role="classifier")  # the old reading: argmax of a 16-d vector
    assert cls["metric"] == "top1_agreement" and "top1_agreement" in cls["outputs"]["output"]
    assert "top-1" not in fidelity.summary(emb) and "cosine" in fidelity.summary(emb)


def test_fidelity_perplexity_ratio_on_text(tmp_path: Path) -> None:
    """A causal LM judged on the user's text: perplexity ratio (compressed / source) of its logits, equal to a direct
    computation; 1.0 for the source itself; --min-fidelity reads 1/ratio; without text: cosine."""
    import copy
    import math

    from edgekit import fidelity
    from edgekit.data import DataSource
    from edgekit.model_io import InputSpec, load_model
    from tests.unit._tiny_llm import TEXT, tiny_llama_folder

    loaded = load_model(tiny_llama_folder(tmp_path / "llama"))
    m = loaded.module
    assert fidelity.model_role(m) == "causal_lm"
    specs = [InputSpec("input_ids", [1, 16], "int64", high=320), InputSpec("attention_mask", [1, 16], "int64")]
    inputs, where, text = fidelity.held_out(specs, DataSource(texts=[" ".join(TEXT * 4)]), 6, m)
    assert text and "token windows" in where and len(inputs) == 6
    inputs, ref = fidelity.source_outputs(m, inputs)
    same = fidelity.measure(m, inputs, ref, where, role="causal_lm", text=True)
    assert same["metric"] == "perplexity_ratio" and abs(same["value"] - 1.0) < 1e-9
    worse = copy.deepcopy(m)
    with torch.no_grad():
        for p in worse.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    got = fidelity.measure(worse, inputs, ref, where, min_fidelity=0.999, role="causal_lm", text=True)
    nll = [0.0, 0.0]
    for x, r in zip(inputs, ref):
        with torch.no_grad():
            g = worse(*x)
        for k, lg in enumerate((torch.from_numpy(r[0]), g)):
            lp = torch.log_softmax(lg[0, :-1].double(), -1)
            nll[k] -= float(lp.gather(1, x[0][0, 1:, None]).sum())
    n = len(inputs) * 15
    want = math.exp(nll[1] / n) / math.exp(nll[0] / n)
    f = got["outputs"]["output"]
    assert abs(f["perplexity_ratio"] - want) < 1e-6 * want and f["perplexity_source"] == pytest.approx(
        math.exp(nll[0] / n), rel=1e-6)
    assert got["value"] == f["perplexity_ratio"] and got["failed"] is (1 / want < 0.999)
    assert "perplexity ratio" in fidelity.summary(got) and "cosine" in f
    no_text = fidelity.measure(worse, inputs, ref, where, role="causal_lm", text=False)
    assert no_text["metric"] == "cosine" and "perplexity_ratio" not in no_text["outputs"]["output"]
    bad = {"metric": "perplexity_ratio", "perplexity_ratio": fidelity.MAX_PPL_RATIO + 0.01}
    assert fidelity._below(bad) and not fidelity._below({**bad, "perplexity_ratio": 1.1})
