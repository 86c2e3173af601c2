"""An app that embeds an edgekit decoder artifact (written with --kv-cache) and completes text: verify the files
against manifest.json, encode the prompt with the artifact's tokenizer.json, run a greedy loop with the KV cache in
the runtime, print the completion.

    python examples/generate_app.py ART --prompt "Once upon a time" [--max-new-tokens 32] [--runtime onnxruntime]

Needs only numpy, `tokenizers` and the runtime (onnxruntime, or openvino for --runtime openvino): no torch, no
edgekit. With --genai the runtime's own generation package runs instead (onnxruntime-genai / openvino-genai).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np


def verify(art: Path, manifest: dict, runtime: str) -> dict:
    """Refuse a tampered or incomplete artifact (the rules of `edgekit verify`): no symbolic links, every listed file
    inside the folder with its sha256, the decoder, the tokenizer and the runtime's export listed; returns the
    runtime's export entry."""
    root = art.resolve()
    for p in art.rglob("*"):
        if p.is_symlink():
            sys.exit(f"{p.relative_to(art)}: symbolic link inside the artifact; refusing it")
    for rel, meta in manifest["files"].items():
        p = (art / rel).resolve()
        if not p.is_relative_to(root) or not p.is_file():
            sys.exit(f"{rel}: outside the artifact or missing; refusing it")
        if hashlib.sha256(p.read_bytes()).hexdigest() != meta["sha256"]:
            sys.exit(f"{rel}: checksum mismatch; the artifact was modified or is incomplete")
    if "decoder" not in manifest:
        sys.exit("not a decoder artifact; write one with `edgekit export MODEL --kv-cache ...`")
    ex = manifest["exports"].get(runtime)
    tok = f"{manifest['tokenizer']['dir']}/tokenizer.json"
    if ex is None or ex["file"] not in manifest["files"] or tok not in manifest["files"]:
        sys.exit(f"no verified {runtime} export or tokenizer in the artifact")
    if not ex["validation"].get("greedy_match"):
        sys.exit(f"the {runtime} export did not reproduce transformers' greedy tokens; refusing it")
    return ex


class Decoder:
    """One greedy step at a time; the cache is the graph's past/present tensors (ONNX Runtime) or the stateful IR's
    variables (OpenVINO)."""

    def __init__(self, path: Path, runtime: str, dec: dict, config: dict, threads: int | None):
        self.runtime, self.dec, self.length = runtime, dec, 0
        if runtime == "onnxruntime":
            import onnxruntime as ort

            so = ort.SessionOptions()
            for k, v in config.items():  # e.g. session.disable_quant_qdq for integer weights
                so.add_session_config_entry(k, str(v))
            if threads:
                so.intra_op_num_threads = threads
            self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            self.outputs = [o.name for o in self.sess.get_outputs()]  # logits, present.{i}.key/value
            shape = (1, dec["kv_heads"], 0, dec["head_dim"])
            self.past = {n: np.zeros(shape, np.float32) for n in dec["inputs"][3:]}
        else:
            import openvino as ov

            cfg = dict(config, **({"INFERENCE_NUM_THREADS": threads} if threads else {}))
            self.req = ov.Core().compile_model(str(path), "CPU", cfg).create_infer_request()
            self.req.reset_state()

    def step(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        feeds = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, self.length + n), np.int64),
                 "position_ids": np.arange(self.length, self.length + n, dtype=np.int64)[None]}
        if self.runtime == "onnxruntime":
            out = dict(zip(self.outputs, self.sess.run(self.outputs, {**feeds, **self.past})))
            self.past = {n.replace("present.", "past_key_values."): v for n, v in out.items() if n != "logits"}
            logits = out["logits"]
        else:
            logits = self.req.infer({**feeds, "beam_idx": np.zeros(1, np.int32)})[0]
        self.length += n
        return logits[0, -1]


def complete(art: Path, manifest: dict, ex: dict, ids: list[int], max_new: int, threads: int | None,
             runtime: str) -> tuple[list[int], list[float]]:
    """Greedy loop: prefill the prompt in one call, then one token per call on the cache; stop at end of text."""
    d = Decoder(art / ex["file"], runtime, manifest["decoder"], ex["validation"].get("runtime_config", {}), threads)
    eos, out, times, t0, feed = set(manifest["decoder"]["eos_token_ids"]), [], [], time.perf_counter(), ids
    for _ in range(max_new):
        tok = int(np.argmax(d.step(feed)))
        out.append(tok)
        times.append(time.perf_counter() - t0)
        if tok in eos:
            break
        feed = [tok]
    return out, times


def complete_genai(art: Path, ex: dict, ids: list[int], max_new: int, runtime: str) -> list[int]:
    """The runtime's own generation package on the same export folder (validated by edgekit when written)."""
    folder = str((art / ex["file"]).parent)
    if runtime == "onnxruntime":
        import onnxruntime_genai as og

        model = og.Model(folder)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + max_new)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(ids, np.int32))
        out = []
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return out
    import openvino as ov
    import openvino_genai as ovg

    pipe = ovg.LLMPipeline(folder, "CPU", **ex["validation"].get("runtime_config", {}))
    cfg = pipe.get_generation_config()
    cfg.max_new_tokens, cfg.do_sample = max_new, False
    x = np.asarray([ids], np.int64)
    return [int(t) for t in pipe.generate(ovg.TokenizedInputs(ov.Tensor(x), ov.Tensor(np.ones_like(x))), cfg).tokens[0]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--genai", action="store_true", help="use onnxruntime-genai / openvino-genai")
    a = ap.parse_args(argv)
    manifest = json.loads((a.artifact / "manifest.json").read_text())
    ex = verify(a.artifact, manifest, a.runtime)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(a.artifact / manifest["tokenizer"]["dir"] / "tokenizer.json"))
    ids = tok.encode(a.prompt).ids
    if not ids:
        sys.exit("the prompt encodes to no tokens")
    if a.genai:
        out, times = complete_genai(a.artifact, ex, ids, a.max_new_tokens, a.runtime), []
    else:
        out, times = complete(a.artifact, manifest, ex, ids, a.max_new_tokens, a.threads, a.runtime)
    tps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    print(json.dumps({"runtime": a.runtime, "genai": a.genai, "prompt_tokens": len(ids), "tokens": out,
                      "text": tok.decode(out), "ttft_ms": round(times[0] * 1e3, 2) if times else None,
                      "decode_tokens_per_s": round(tps, 1) if tps else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
