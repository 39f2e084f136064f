"""Constrained vs unconstrained beam search: seconds per request, interleaved, same run.

``python -m think_rec.eval.bench_decode`` (no model dir: a tiny random Qwen2 and a synthetic
codebook of 1000 items x 3 levels x 32 codes) writes ``eval/results/decode.{json,md,png}``.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from think_rec.decoding import SIDTrie, recommend
from think_rec.itemic.codebook import SIDCodebook

from .report import write_report

WORDS = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(61)]


def synthetic_codebook(n_items: int = 1000, levels: int = 3, codes: int = 32, seed: int = 0) -> SIDCodebook:
    """``n_items`` distinct random SIDs (item ids ``i0``, ``i1``, ...)."""
    rng = random.Random(seed)
    sids: set[tuple[int, ...]] = set()
    while len(sids) < n_items:
        sids.add(tuple(rng.randrange(codes) for _ in range(levels)))
    return SIDCodebook({f"i{n}": sid for n, sid in enumerate(sorted(sids))}, [codes] * levels)


def tiny_model(codebook: SIDCodebook, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A random ``Qwen2ForCausalLM`` and a word-level tokenizer holding the codebook's SID tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  eos_token="<eos>")
    tok.add_tokens(codebook.vocabulary(), special_tokens=True)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval(), tok


def _load(model_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    codebook = SIDCodebook.load(model_dir)
    return model, tok, codebook


def run(model_dir: str | None = None, out_dir: str | Path = "eval/results", requests: int = 32,
        batch_size: int = 8, k: int = 10, reps: int = 3, hidden: int = 256, layers: int = 4) -> dict:
    """Time both decoders on the same prompts, alternating per batch; write the ``decode`` report."""
    torch.set_num_threads(1)
    if model_dir:
        model, tok, codebook = _load(model_dir)
    else:
        codebook = synthetic_codebook()
        model, tok = tiny_model(codebook, hidden=hidden, layers=layers)
    trie = SIDTrie.from_codebook(codebook, tok)
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS[3:]) for _ in range(rng.randint(8, 24))) for _ in range(requests)]
    batches = [prompts[i:i + batch_size] for i in range(0, requests, batch_size)]
    recommend(model, tok, batches[0], trie, k=k)  # warm-up
    seconds = {"constrained": 0.0, "unconstrained": 0.0}
    for _ in tqdm(range(reps), desc="decode bench"):
        for batch in batches:
            for system in seconds:
                start = time.perf_counter()
                recommend(model, tok, batch, trie, k=k, unconstrained=system == "unconstrained")
                seconds[system] += time.perf_counter() - start
    per_request = {s: t / (reps * requests) for s, t in seconds.items()}
    payload = {
        "benchmark": "decode",
        "dataset": f"synthetic codebook {len(codebook)} items x {codebook.codebook_sizes}"
                   if not model_dir else str(model_dir),
        "setup": {"model": model_dir or f"random Qwen2 hidden {hidden} x {layers} layers",
                  "requests": requests, "batch_size": batch_size, "num_beams": k, "reps": reps,
                  "threads": 1},
        "rows": [{"system": s, "seconds_per_request": round(v, 6)} for s, v in per_request.items()],
        "overhead": round(per_request["constrained"] / per_request["unconstrained"] - 1, 4),
    }
    write_report("decode", payload, out_dir, metric_keys=["seconds_per_request"])
    return payload


if __name__ == "__main__":
    print(run())
