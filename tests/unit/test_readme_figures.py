"""README's measured figures agree with benchmarks/results/*.json (issue 13 §2), and the checker notices when not."""
from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
rf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rf)

README = (ROOT / "README.md").read_text()


@pytest.fixture()
def results():
    return rf.Results()


def _block(text: str, name: str) -> str:
    return next(m["body"] for m in rf._BLOCK.finditer(text) if m["name"] == name)


def test_readme_agrees_with_results(results):
    problems = rf.check(README, results)
    assert not problems, "README and benchmarks/results disagree (run scripts/readme_figures.py):\n" + \
        "\n".join(problems)


def test_every_renderer_has_a_block_and_each_table_names_its_source(results):
    names = {m["name"] for m in rf._BLOCK.finditer(README)}
    assert names == set(rf.RENDERERS)
    for name, body in rf.render_all(results).items():
        last = body.strip().splitlines()[-1]
        assert "benchmarks/results/" in last and "scripts/readme_figures.py" in last, name


def test_changed_table_figure_is_caught(results):
    body = _block(README, "udfc-zoo")
    assert "0.593 / 0.949" in body  # Lite0 W6, default udfc
    bad = README.replace(body, body.replace("0.593 / 0.949", "0.594 / 0.949"))
    assert rf.check_blocks(bad, results) == ["udfc-zoo"]
    # rewriting restores the rendered block and leaves the text around it alone
    assert rf.rewrite(bad, results) == README


def test_changed_prose_figure_is_caught(results):
    old = "but MiniLM keeps probe 0.802"
    assert old in README
    bad = README.replace(old, "but MiniLM keeps probe 0.812")
    problems = rf.check(bad, results)
    assert len(problems) == 1 and "0.802" in problems[0] and problems[0].startswith("claim not found")


def test_changed_result_is_caught(results):
    cell = results("baselines")["models"]["efficientnet"]["cells"]["rtn4"]
    cell["latency"]["tflite"]["latency_vs_fp32"] = 1.0
    problems = rf.check(README, results)
    assert "block differs: peer-baselines" in problems
    assert any("3.03x" not in p and "RTN W4 runs at 1.00x" in p for p in problems)


def test_missing_result_is_reported_not_raised(results):
    del results("optin")["scoring_time_cli"]["cpu_s_compress_and_eval"]
    problems = rf.check_claims(README, results)
    assert len(problems) == 1 and "figure not in the results" in problems[0]


def test_rows_that_failed_validation_are_marked(results):
    # no edgekit cell failed its validation in the recorded run: no row carries the mark
    table = rf.render_peer_baselines(results)
    rtn4 = next(line for line in table.splitlines() if line.startswith("| edgekit RTN W4"))
    rtn8 = next(line for line in table.splitlines() if line.startswith("| edgekit RTN W8"))
    assert "failed validation on" not in rtn4 + rtn8
    # MiniLM's RTN W4 LiteRT file kept float weights (recorded in the JSON), EfficientNet's got int4: only the
    # MiniLM cell says so
    minilm_cell, effnet_cell = rtn4.split(" | ")[1:3]
    assert re.search(r"LiteRT \d\.\d\dx \(float weights", minilm_cell) and "float weights" not in effnet_cell
    # flipping a recorded validation flips the mark, in the peer table and the DenseShift table
    results("baselines")["models"]["efficientnet"]["cells"]["rtn8"]["info"]["validation"]["onnxruntime"]["passed"] \
        = False
    rtn8 = next(line for line in rf.render_peer_baselines(results).splitlines()
                if line.startswith("| edgekit RTN W8"))
    assert rtn8.count("failed validation on") == 1
    assert "refused" not in rf.render_denseshift(results)
    rows = results("denseshift")["cli"]["rows"]  # a compress refused by edgekit's validation is a recorded result
    rows["denseshift_w2_ft2000"] = {**rows["denseshift_w2_ft2000"], "error": "ExportMismatchError: openvino differs"}
    row = next(line for line in rf.render_denseshift(results).splitlines() if line.startswith("| DenseShift 2-bit"))
    assert "| refused: ExportMismatchError |" in row


def test_goal_verdicts_follow_the_figures(results):
    v = results("llm_fp4")["smollm2_cli"]["variants"]
    assert re.search(r"\*\*default\*\*.*\| <= 20: missed \|", rf.render_llm_fp4_smollm2(results))
    v["fpq_w4a8"]["metrics"]["perplexity_python_docs"] = 19.0
    assert re.search(r"\*\*default\*\*.*\| <= 20: met \|", rf.render_llm_fp4_smollm2(results))
    v["fpq_w4a8"] = {**v["fpq_w4a8"], "error": "ExportMismatchError: refused"}  # a refused export never meets a goal
    assert re.search(r"\*\*default\*\*.*\| refused \|.*\| <= 20: missed \|", rf.render_llm_fp4_smollm2(results))


def test_cli_check_and_rewrite(tmp_path, results):
    body = _block(README, "denseshift")
    assert "0.9284" in body
    bad = README.replace(body, body.replace("0.9284", "0.9999"))
    path = tmp_path / "README.md"
    path.write_text(bad)
    path.chmod(0o644)
    assert rf.main(["--check", "--readme", str(path)]) == 1
    assert path.read_text() == bad  # --check changes nothing
    assert rf.main(["--readme", str(path)]) == 0
    assert path.read_text() == README
    assert path.stat().st_mode & 0o777 == 0o644  # the atomic write keeps the file's mode
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left


def test_results_are_not_mutated_by_rendering(results):
    before = copy.deepcopy(results("udfc"))
    rf.render_all(results)
    assert results("udfc") == before
