"""SmolLM2-135M generation with a KV cache: decode tokens/s and time to first token of FP32 and integer-weight
decoders on ONNX Runtime and OpenVINO, interleaved with FP32 on the same runtime in one process; greedy agreement with
FP32; perplexity through each variant's own decoder graph; peak RSS through `edgekit generate`.

Parts (run one at a time on a quiet box; each writes its key of benchmarks/results/genai.json):
  python benchmarks/genai.py build                 # the three artifacts, with the CLI (commands recorded)
  python benchmarks/genai.py speed [--rounds 5] [--new-tokens 64] [--prompt-tokens 128] [--threads 2]
  python benchmarks/genai.py ppl [--docs 16] [--gpl 8]
  python benchmarks/genai.py rss                   # `edgekit generate --json` per artifact/runtime/stack

Variants (per runtime, FP32 first):
- fp32: the FP32 decoder (numpy greedy loop), and the runtime's own stack (onnxruntime-genai, openvino-genai);
- rtn_w8 / rtn_w4: `edgekit compress smollm2 --method rtn --set bits=8|4 --kv-cache` (per-channel symmetric codes).
  On ONNX Runtime the artifact runs 4-bit weights as MatMulNBits (edgekit.genai.nbits, exact, fp32 compute) and
  8-bit weights as DequantizeLinear folded at load; "MatMulNBits" is the exact 8-bit MatMulNBits form (not used by
  the artifact: it is slow), "+a8" is MatMulNBits with accuracy_level 4 (int8 activations per block, dynamic:
  W8A8 / W4A8, not validated against the weights-only model). OpenVINO runs the int4/int8
  weights compressed, with its dynamic activation quantization off (validated setting) or on ("+a8", its default);
- nncf_int4 (peer): nncf.compress_weights(INT4_SYM, group 128 / ADJUST) on the FP32 stateful IR, as baselines.py.
Floor: weight bytes of the file / the host's single-thread copy bandwidth (a lower bound of the real bandwidth, so
the floor is an upper bound of the true floor) - every weight is read once per decoded token.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np

from edgekit.genai import loop, stacks
from edgekit.genai.nbits import to_matmulnbits

OUT = Path(__file__).parent / "results" / "genai.json"
ARTS = Path(os.environ.get("EDGEKIT_GENAI_ARTS", "out/genai"))
BUILD = {
    "fp32": [["export", "smollm2", "--target", "onnxruntime", "--kv-cache", "-o", "{d}"],
             ["export", "{d}", "--target", "openvino"]],
    "rtn_w8": [["compress", "smollm2", "--method", "rtn", "--set", "bits=8", "--kv-cache", "--target", "onnxruntime",
                "--target", "openvino", "-o", "{d}"]],
    "rtn_w4": [["compress", "smollm2", "--method", "rtn", "--set", "bits=4", "--kv-cache", "--target", "onnxruntime",
                "--target", "openvino", "-o", "{d}"]],
    # group-wise scales (one per 64 / 32 input weights; SmolLM2's K = 576 and 1536 are multiples of both, not of 128)
    "rtn_w4_g64": [["compress", "smollm2", "--method", "rtn", "--set", "bits=4", "--set", "group_size=64", "--kv-cache",
                    "--target", "onnxruntime", "--target", "openvino", "-o", "{d}"]],
    "rtn_w4_g32": [["compress", "smollm2", "--method", "rtn", "--set", "bits=4", "--set", "group_size=32", "--kv-cache",
                    "--target", "onnxruntime", "--target", "openvino", "-o", "{d}"]],
}
NO_PEER = [False]
ONLY: list[str] = []  # --only: these variants (+ fp32) instead of all; results go to "<part>_<names>" keys
OV_DYNQ = {k: v for k, v in loop.OV_CONFIG.items() if k != "DYNAMIC_QUANTIZATION_GROUP_SIZE"}
PROMPT = "Python is a programming language that lets you work quickly and integrate systems more effectively."


def log(*a) -> None:
    print(*a, flush=True)


def save(key: str, value: dict, threads: int | None = None) -> None:
    from edgekit.profile import provenance

    OUT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    data[key] = {**value, "provenance": provenance(threads=threads)}
    OUT.write_text(json.dumps(data, indent=1, default=float))


def manifest(name: str) -> dict:
    from edgekit.artifact import read_manifest

    return read_manifest(ARTS / name)  # verified


def _names() -> list[str]:
    return ["fp32", *[n for n in BUILD if n in ONLY and n != "fp32"]] if ONLY else list(BUILD)


def _key(part: str) -> str:
    return part if not ONLY else f"{part}_{'+'.join(n for n in _names() if n != 'fp32')}"


def build(_: argparse.Namespace) -> None:
    cmds = {}
    for name, steps in ((n, BUILD[n]) for n in _names()):
        d = ARTS / name
        cmds[name] = [" ".join(["edgekit", *[shlex.quote(a.format(d=d)) for a in s]]) for s in steps]
        if (d / "manifest.json").is_file():
            log(f"{name}: exists ({d})")
            continue
        for s in steps:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "edgekit.cli", *[a.format(d=d) for a in s]], check=True)
            log(f"{name}: {' '.join(s)} {time.perf_counter() - t0:.0f} s")
    save(_key("build"), {"commands": cmds, "artifacts": str(ARTS)})


def _file_bytes(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def variants(runtime: str, threads: int, tmp: Path) -> list[dict]:
    """[{name, bytes, run(ids, n) -> Greedy, note}] with every model loaded once, FP32 first."""
    out = []
    for name in _names():
        man = manifest(name)
        ex, info = man["exports"][runtime], man["decoder"]
        path = ARTS / name / ex["file"]
        cfg = ex["validation"].get("runtime_config") or {}
        files = [(name, path, cfg, ex.get("weights", {}).get("kind", "stateful IR"))]
        if name != "fp32" and runtime == "onnxruntime" and ex.get("weights", {}).get("kind") != "MatMulNBits":
            p0 = tmp / f"{name}_nbits.onnx"
            to_matmulnbits(ARTS / name / man["model"], p0, accuracy_level=0)
            files.append((name + " MatMulNBits", p0, cfg, "MatMulNBits accuracy_level 0 (fp32 compute, exact); not "
                          "what the artifact runs"))
        if name != "fp32" and runtime == "onnxruntime":
            a8 = tmp / f"{name}_a8.onnx"
            to_matmulnbits(ARTS / name / man["model"], a8, accuracy_level=4)
            files.append((name + "+a8", a8, cfg, "MatMulNBits accuracy_level 4 (int8 activations)"))
        elif name != "fp32":
            files.append((name + "+a8", path, OV_DYNQ, "OpenVINO dynamic activation quantization on (default)"))
        for vname, p, c, note in files:
            dec = loop.open_decoder(p, runtime, info, threads, c)
            out.append({"name": vname, "bytes": _file_bytes(p), "note": note, "dec": dec,
                        "run": (lambda d: lambda ids, n: loop.greedy(d, ids, n))(dec)})
        if name == "fp32":  # the runtime's own generation stack on the same files
            folder = path.parent
            if runtime == "onnxruntime":
                m = stacks.ort_model(folder, threads)
                run = (lambda m: lambda ids, n: stacks.ort_genai(folder, ids, n, ignore_eos=True, model=m))(m)
            else:
                pipe = stacks.ov_pipeline(folder, threads)
                run = (lambda p: lambda ids, n: stacks.ov_genai(folder, ids, n, ignore_eos=True, pipe=p))(pipe)
            out.append({"name": "fp32 (" + ("onnxruntime-genai" if runtime == "onnxruntime" else "openvino-genai") +
                        ")", "bytes": _file_bytes(path), "note": "the runtime's own generation stack", "run": run})
    if runtime == "openvino" and not NO_PEER[0]:
        out.append(_nncf_int4(ARTS / "fp32" / manifest("fp32")["exports"]["openvino"]["file"], tmp, threads,
                              manifest("fp32")["decoder"]))
    return out


def _nncf_int4(xml: Path, tmp: Path, threads: int, info: dict) -> dict:
    import nncf
    import openvino as ov

    adjust = nncf.quantization.advanced_parameters.GroupSizeFallbackMode.ADJUST  # 576 = 4.5 x 128: NNCF picks 64
    m = nncf.compress_weights(ov.Core().read_model(str(xml)), mode=nncf.CompressWeightsMode.INT4_SYM, group_size=128,
                              advanced_parameters=nncf.AdvancedCompressionParameters(group_size_fallback_mode=adjust))
    p = tmp / "nncf_int4.xml"
    ov.save_model(m, str(p))
    dec = loop.open_decoder(p, "openvino", info, threads, OV_DYNQ)
    return {"name": "nncf_int4 (peer)", "bytes": _file_bytes(p), "dec": dec,
            "run": lambda ids, n: loop.greedy(dec, ids, n), "note": "nncf.compress_weights INT4_SYM group 128 ratio 1 (NNCF's default INT8 backup for embeddings/head)"}


def prompt_ids(n: int) -> list[int]:
    from tokenizers import Tokenizer

    man = manifest("fp32")
    tok = Tokenizer.from_file(str(ARTS / "fp32" / man["tokenizer"]["dir"] / "tokenizer.json"))
    from edgekit.eval.perplexity import load_text

    ids = tok.encode(PROMPT + "\n\n" + load_text("python_docs")).ids
    return ids[:n]


def speed(a: argparse.Namespace) -> None:
    from edgekit.targets.host import copy_bandwidth_gbs

    ids = prompt_ids(a.prompt_tokens)
    res = {"prompt_tokens": len(ids), "new_tokens": a.new_tokens, "rounds": a.rounds, "threads": a.threads,
           "bandwidth_gbs_single_thread_copy": round(copy_bandwidth_gbs(), 2), "runtimes": {}}
    for rt in a.runtime:
        with tempfile.TemporaryDirectory(prefix="genai-bench-") as tmp:
            vs = variants(rt, a.threads, Path(tmp))
            for v in vs:  # warm-up + reference tokens
                v["tokens"] = v["run"](ids, a.new_tokens).tokens
                v["ttft"], v["tps"] = [], []
            for r in range(a.rounds):  # interleaved, rotating the order each round
                order = vs[r % len(vs):] + vs[:r % len(vs)]
                for v in order:
                    g = v["run"](ids, a.new_tokens)
                    v["ttft"].append(g.times[0])
                    v["tps"].append((len(g.times) - 1) / (g.times[-1] - g.times[0]))
                log(f"{rt} round {r + 1}/{a.rounds}: " + ", ".join(f"{v['name']} {v['tps'][-1]:.1f}/s" for v in vs))
            res["runtimes"][rt] = _rows(vs, res["bandwidth_gbs_single_thread_copy"])
    res["load_after"] = os.getloadavg()
    save(_key("speed"), res, a.threads)
    log(json.dumps(res, indent=1, default=float))


def _rows(vs: list[dict], bw: float) -> dict:
    base = vs[0]
    rows = {}
    for v in vs:
        ratio = np.asarray(v["tps"]) / np.asarray(base["tps"])
        same = sum(x == y for x, y in zip(v["tokens"], base["tokens"]))
        prefix = next((i for i, (x, y) in enumerate(zip(v["tokens"], base["tokens"])) if x != y), len(v["tokens"]))
        tps = float(np.median(v["tps"]))
        rows[v["name"]] = {
            "decode_tokens_per_s": round(tps, 2), "ms_per_token": round(1e3 / tps, 1),
            "decode_vs_fp32": round(float(np.median(ratio)), 3),
            "decode_vs_fp32_range": [round(float(ratio.min()), 3), round(float(ratio.max()), 3)],
            "ttft_ms": round(float(np.median(v["ttft"])) * 1e3, 1),
            "ttft_vs_fp32": round(float(np.median(np.asarray(v["ttft"]) / np.asarray(base["ttft"]))), 3),
            "file_mb": round(v["bytes"] / 1e6, 1), "floor_ms_per_token": round(v["bytes"] / (bw * 1e9) * 1e3, 1),
            "greedy_tokens_equal_to_fp32": f"{same}/{len(v['tokens'])} (identical prefix {prefix})",
            "note": v["note"]}
    return rows


class _Tok:
    """HF-style callable over tokenizers.Tokenizer for edgekit.eval.perplexity.windows."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.t = Tokenizer.from_file(str(path))

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.t.encode(text, add_special_tokens=add_special_tokens).ids}


def ppl(a: argparse.Namespace) -> None:
    from edgekit.eval.perplexity import windows

    tok = _Tok(ARTS / "fp32" / "tokenizer" / "tokenizer.json")
    texts = {"python_docs": windows(tok, "python_docs", 512, a.docs), "gpl3": windows(tok, "gpl3", 512, a.gpl)}
    res = {"windows": {k: len(v) for k, v in texts.items()}, "window": 512, "runtimes": {}}
    for rt in a.runtime:
        with tempfile.TemporaryDirectory(prefix="genai-ppl-") as tmp:
            vs = variants(rt, a.threads, Path(tmp))
            rows = {}
            for v in vs:
                if "dec" not in v or v["name"].endswith(" MatMulNBits"):
                    continue  # a generation stack over the fp32 file (no logits); the exact, slow 8-bit form
                rows[v["name"]] = {k: round(_ppl(v["dec"], w), 3) for k, w in texts.items()}
                log(rt, v["name"], rows[v["name"]])
            res["runtimes"][rt] = rows
    save(_key("perplexity"), res, a.threads)


def _ppl(dec, wins: np.ndarray) -> float:
    nll, n = 0.0, 0
    for w in wins:
        dec.reset()
        lg = dec.step(list(w), every=True).astype(np.float64)[:-1]
        lp = lg - lg.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        nll -= lp[np.arange(len(w) - 1), w[1:]].sum()
        n += len(w) - 1
    return float(np.exp(nll / n))


def rss(a: argparse.Namespace) -> None:
    rows = {}
    for name in _names():
        for rt in a.runtime:
            for stack in ("numpy", "genai"):
                cmd = ["edgekit", "generate", str(ARTS / name), "--runtime", rt, "--threads", str(a.threads),
                       "--prompt", PROMPT, "--max-new-tokens", str(a.new_tokens), "--ignore-eos", "--stack", stack,
                       "--json"]
                p = subprocess.run([sys.executable, "-m", "edgekit.cli", *cmd[1:]], capture_output=True, text=True)
                if p.returncode:
                    rows[f"{name} {rt} {stack}"] = {"command": " ".join(map(shlex.quote, cmd)), "error": p.stderr[-300:]}
                    continue
                g = json.loads(p.stdout)
                rows[f"{name} {rt} {stack}"] = {"command": " ".join(map(shlex.quote, cmd)), **{
                    k: g[k] for k in ("stack", "ttft_s", "decode_tokens_per_s", "peak_rss_mb", "load_s")}}
                log(name, rt, stack, rows[f"{name} {rt} {stack}"])
    save(_key("rss"), {"rows": rows}, a.threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["build", "speed", "ppl", "rss"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--gpl", type=int, default=8)
    ap.add_argument("--only", default="", help=f"comma-separated variants (+ fp32), of {', '.join(BUILD)}")
    ap.add_argument("--no-peer", action="store_true", help="skip the NNCF INT4 peer row on OpenVINO")
    a = ap.parse_args()
    bad = [n for n in a.only.split(",") if n and n not in BUILD]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {', '.join(BUILD)}")
    ONLY[:] = [n for n in a.only.split(",") if n]
    NO_PEER[0] = a.no_peer
    {"build": build, "speed": speed, "ppl": ppl, "rss": rss}[a.part](a)


if __name__ == "__main__":
    main()
