"""A tiny Llama (2 layers, d=64, 4 query / 2 KV heads) and a tiny byte-level BPE tokenizer built in code, saved as a
Hugging Face folder (config + safetensors + tokenizer.json): a decoder with every feature of SmolLM2's, in seconds."""
from __future__ import annotations

import json
from pathlib import Path

TEXT = ["The quick brown fox jumps over the lazy dog. " * 3,
        "Once upon a time there was a small model that ran on the edge.",
        "Edge devices generate text token by token with a cache of keys and values.",
        "The capital of France is Paris, and the capital of Italy is Rome."]
VOCAB = 320


def tiny_tokenizer(folder: Path) -> Path:
    """Train a byte-level BPE (GPT-2 style, like SmolLM2's) on a few sentences; write tokenizer.json + config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, tr)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>", "model_max_length": 256, "add_bos_token": False}))
    return folder


def tiny_llama(seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_llama_folder(folder: Path, seed: int = 0) -> Path:
    """An HF folder (what `edgekit export DIR --kv-cache` reads) holding the tiny Llama and its tokenizer."""
    m = tiny_llama(seed)
    m.save_pretrained(str(folder))
    tiny_tokenizer(folder)
    return folder
