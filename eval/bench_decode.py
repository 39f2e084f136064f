"""Constrained vs unconstrained beam search on the tiny preset: seconds per request, interleaved, same run.

Constrained is the trie beam search (``think_rec.decoding.search.beam_search``); unconstrained is plain HF
``generate`` beam search, its SIDs parsed afterwards (``unconstrained_beam``). ``think-rec bench decode``
builds the tiny preset over a generated shop (2,000 items, random distinct 3 x 32 SIDs), renders real
recommend prompts and writes ``eval/results/decode.{json,md,png}``.
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from think_rec.decoding import SIDTrie
from think_rec.decoding.search import beam_search, encode, left_pad
from think_rec.itemic.codebook import SID_END, SIDCodebook
from think_rec.prompts import render_recommend_prompt

from .report import write_report


def synthetic_codebook(item_ids: list[str], levels: int = 3, codes: int = 32, seed: int = 0) -> SIDCodebook:
    """Distinct random SIDs for ``item_ids`` (timing only: no encoder needed)."""
    rng = random.Random(seed)
    sids: set[tuple[int, ...]] = set()
    while len(sids) < len(item_ids):
        sids.add(tuple(rng.randrange(codes) for _ in range(levels)))
    return SIDCodebook(dict(zip(item_ids, sorted(sids))), [codes] * levels)


def tiny_setup(work_dir: Path, n_items: int, seed: int = 0):
    """The tiny preset (Qwen3-VL class) on a generated shop of ``n_items``, with SID tokens added."""
    from think_rec.data.synthetic import generate_catalog
    from think_rec.model.itemic_tokens import add_sid_tokens
    from think_rec.model.loading import load_model
    from think_rec.model.tiny import build_tiny

    data = generate_catalog(n_items, 200, seed=seed, with_images=False)
    codebook = synthetic_codebook(data.catalog.ids, seed=seed)
    build_tiny(work_dir / "tiny", data.catalog.texts(), seed=seed)
    model, processor = load_model(str(work_dir / "tiny"))
    add_sid_tokens(model, processor, codebook, dict(zip(data.catalog.ids, data.catalog.items["title"])))
    return model.eval(), processor, codebook, data


@torch.no_grad()
def unconstrained_beam(model, processor, prompts: list[str], codebook: SIDCodebook, k: int) -> list[list[str]]:
    """Plain HF beam search (``k`` beams, no trie): per prompt, the distinct catalog items its beams parse to."""
    tok = getattr(processor, "tokenizer", processor)
    ids, mask = left_pad(encode(tok, prompts), tok.pad_token_id)
    out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), num_beams=k,
                         num_return_sequences=k, do_sample=False, max_new_tokens=codebook.levels + 2,
                         eos_token_id=tok.convert_tokens_to_ids(SID_END), pad_token_id=tok.pad_token_id)
    parsed = [codebook.parse(text) for text in tok.batch_decode(out[:, ids.shape[1]:])]
    return [list(dict.fromkeys(p[0] for p in parsed[i * k:(i + 1) * k] if p and p[0] is not None))
            for i in range(len(prompts))]


def run(out_dir: str | Path = "eval/results", n_items: int = 2000, requests: int = 32, batch_size: int = 8,
        k: int = 10, reps: int = 3, max_history: int = 10, seed: int = 0) -> dict:
    """Time both decoders on the same recommend prompts, alternating per batch; write the ``decode`` report."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model, processor, codebook, data = tiny_setup(Path(tmp), n_items, seed)
    trie = SIDTrie.from_codebook(codebook, processor)
    histories = [h[-max_history:] for h in data.interactions.sequences[:requests]]
    prompts = [render_recommend_prompt(h, data.catalog, codebook, processor, with_images=False).text
               for h in histories]
    batches = [prompts[i:i + batch_size] for i in range(0, requests, batch_size)]
    systems = {"constrained": lambda batch: beam_search(model, processor, batch, trie, num_beams=k, k=k),
               "unconstrained": lambda batch: unconstrained_beam(model, processor, batch, codebook, k)}
    for decode in systems.values():
        decode(batches[0])  # warm-up
    seconds = dict.fromkeys(systems, 0.0)
    for _ in tqdm(range(reps), desc="decode bench"):
        for batch in batches:
            for system, decode in systems.items():
                start = time.perf_counter()
                decode(batch)
                seconds[system] += time.perf_counter() - start
    per_request = {s: t / (reps * requests) for s, t in seconds.items()}
    payload = {
        "benchmark": "decode",
        "dataset": f"generated shop, {len(codebook)} items, random SIDs {codebook.codebook_sizes}",
        "setup": {"model": "tiny preset (Qwen3-VL class, random init)", "requests": requests,
                  "batch_size": batch_size, "num_beams": k, "reps": reps, "max_history": max_history,
                  "threads": 1},
        "rows": [{"system": s, "seconds_per_request": round(v, 6)} for s, v in per_request.items()],
        "overhead": round(per_request["constrained"] / per_request["unconstrained"] - 1, 4),
    }
    write_report("decode", payload, out_dir, metric_keys=["seconds_per_request"])
    return payload


if __name__ == "__main__":
    print(run())
