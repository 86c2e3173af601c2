"""Generate text from a decoder artifact on a runtime: the runtime's own generation stack where the artifact validated
it and its package is installed, else the numpy greedy loop; with time to first token, decode tokens/s and peak RSS.

Torch-free: only numpy, `tokenizers` and the runtime (and its genai package) are imported.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..artifact import read_manifest
from ..errors import ConfigError, MissingDependencyError
from .loop import Greedy, greedy, open_decoder, validated_config

STACKS = ("auto", "genai", "numpy")


@dataclass
class Generation:
    """One generation: text, token ids, and its speed as the runtime delivered it."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    runtime: str
    stack: str
    threads: int | None
    ttft_s: float  # prompt in -> first new token (prefill + first sampling), tokenization excluded
    decode_tokens_per_s: float | None  # (new tokens - 1) / time after the first token
    peak_rss_mb: float  # whole process, from before the model was loaded to the end of generation
    load_s: float
    note: str = ""

    def summary(self) -> str:
        """The one-line speed summary the CLI prints."""
        tps = f"{self.decode_tokens_per_s:.1f} tokens/s" if self.decode_tokens_per_s else "n/a (1 token)"
        return (f"{self.runtime} via {self.stack}, {self.threads or 'default'} threads: prompt {self.prompt_tokens} "
                f"tokens, {len(self.tokens)} new; time to first token {self.ttft_s * 1e3:.1f} ms, decode {tps}, "
                f"peak RSS {self.peak_rss_mb:.0f} MB, load {self.load_s:.2f} s")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _runtime_and_threads(runtime: str | None, target: str | None) -> tuple[str, int | None]:
    if target:
        if runtime:
            raise ConfigError("pass --target or --runtime, not both")
        from ..targets import load_target

        from ..targets.host import usable_cores

        t = load_target(target)
        cores = usable_cores()
        return t.runtime, min(t.threads, cores) if t.threads else None
    return runtime or "onnxruntime", None


def _tokenizer(art: Path, man: dict):
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise MissingDependencyError("tokenizers", "genai") from e
    tok = man.get("tokenizer") or {}
    if "tokenizer.json" not in tok.get("files", []):
        raise ConfigError(f"{art} records no tokenizer; re-create it with --kv-cache")
    return Tokenizer.from_file(str(art / tok["dir"] / "tokenizer.json"))


def _stack_ok(entry: dict, stack: str) -> tuple[bool, str]:
    """Use the runtime's own stack? Only when it validated (tokens matched transformers) and is asked for or auto."""
    g = entry.get("genai") or {}
    if stack == "numpy":
        return False, ""
    if g.get("status") == "ok":
        return True, ""
    why = f"{g.get('stack', 'its generation stack')} did not validate for this artifact ({g.get('reason', 'n/a')})"
    if stack == "genai":
        raise ConfigError(why + "; run with --stack numpy")
    return False, why


def generate(art: Path, prompt: str, max_new_tokens: int = 32, runtime: str | None = None, target: str | None = None,
             threads: int | None = None, stack: str = "auto", stop_at_eos: bool = True,
             on_token: Callable[[int], None] | None = None) -> Generation:
    """Greedy completion of `prompt` by the artifact's export for the runtime (or the target's runtime/threads)."""
    from ..profile.measure import PeakRSS

    if stack not in STACKS:
        raise ConfigError(f"unknown --stack '{stack}'; choose one of {', '.join(STACKS)}")
    if not 1 <= max_new_tokens <= 100_000:
        raise ConfigError(f"--max-new-tokens must be between 1 and 100000, not {max_new_tokens}")
    art = Path(art)
    man = read_manifest(art)  # verified: checksums, paths, no symlinks
    if "decoder" not in man:
        raise ConfigError(f"{art} is not a decoder artifact with a KV cache; create one with `edgekit export smollm2 "
                          "--target onnxruntime --kv-cache -o ART`")
    rt, t_threads = _runtime_and_threads(runtime, target)
    threads = threads or t_threads
    if rt not in ("onnxruntime", "openvino"):
        raise ConfigError(f"generation runs on onnxruntime or openvino, not {rt}")
    entry = man.get("exports", {}).get(rt)
    if entry is None:
        raise ConfigError(f"{art} has no {rt} export (has: {', '.join(man.get('exports', {})) or 'none'}); re-create "
                          f"it with --kv-cache --target {rt}")
    info = man["decoder"]
    tok = _tokenizer(art, man)
    ids = tok.encode(prompt).ids
    if not ids:
        raise ConfigError("the prompt encodes to no tokens; pass a non-empty --prompt")
    if len(ids) + max_new_tokens > info["context_length"]:
        raise ConfigError(f"prompt ({len(ids)} tokens) + --max-new-tokens {max_new_tokens} exceed the model's context "
                          f"of {info['context_length']} tokens")
    use_genai, note = _stack_ok(entry, stack)
    eos = info.get("eos_token_ids", []) if stop_at_eos else []
    mem = PeakRSS()
    try:
        mem.reset()
        t0 = time.perf_counter()
        folder = (art / entry["file"]).parent
        if use_genai and rt == "onnxruntime":
            from .stacks import ort_genai

            res, name, load_s = ort_genai(folder, ids, max_new_tokens, threads, ignore_eos=not stop_at_eos), \
                "onnxruntime-genai", None
        elif use_genai:
            from .stacks import ov_genai, ov_pipeline

            pipe = ov_pipeline(folder, threads, validated_config(entry["validation"], rt))
            load_s = time.perf_counter() - t0
            res, name = ov_genai(folder, ids, max_new_tokens, threads, ignore_eos=not stop_at_eos, pipe=pipe), \
                "openvino-genai"
        else:
            cfg = validated_config(entry["validation"], rt)
            dec = open_decoder(art / entry["file"], rt, info, threads, cfg)
            load_s = time.perf_counter() - t0
            res, name = greedy(dec, ids, max_new_tokens, eos, on_token=on_token), "numpy loop"
        total = time.perf_counter() - t0
        peak = mem.peak_mb()
    finally:
        mem.close()
    if load_s is None:  # onnxruntime-genai: model load and generation are timed together; split by the first token
        load_s = max(total - res.times[-1], 0.0) if res.times else total
    return _result(res, tok, ids, rt, name, threads, peak, load_s, note)


def _result(res: Greedy, tok: Any, ids: list[int], rt: str, stack: str, threads: int | None, peak: float,
            load_s: float, note: str) -> Generation:
    t = res.times
    ttft = t[0] if t else float("nan")
    tps = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None
    return Generation(tok.decode(res.tokens), res.tokens, len(ids), rt, stack, threads, ttft, tps, peak, load_s, note)
