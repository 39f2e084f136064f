"""``think_then_recommend``: write a rationale inside ``<think>…</think>``, then recommend catalog items.

Two phases, one code path for eval and serving:

1. the prompt gets ``<think>`` appended and the model writes the rationale (greedy, or
   ``num_rationales`` samples), with SID and special tokens suppressed; it stops at ``</think>``, and
   a rationale still open after ``max_think_tokens`` tokens is force-closed (``max_think_tokens=0``
   gives an empty think);
2. constrained beam search over the SID trie continues ``prompt <think>rationale</think>``, so the
   answer is always a catalog item.

Several rationales per user are merged by **mean probability** (marginalising over rationales): an
item's merged score is ``log(mean_r exp(score_r))`` where ``score_r`` is its beam score under
rationale ``r`` (length-normalised log-probability; all SIDs have the same length) and an item
missing from rationale ``r``'s beam counts as probability 0 there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .beam import _encode, recommend
from .trie import SIDTrie

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class ThinkResult:
    """One prompt's rationales (decoded text, in sampling order) and merged ``(item_id, score)``s, best first."""

    rationales: list[str]
    items: list[tuple[str, float]]


def _token_id(tok, token: str) -> int:
    tid = tok.convert_tokens_to_ids(token)
    if tid is None or tid == tok.unk_token_id:
        raise ValueError(f"the tokenizer has no {token!r} token; build the model with think tokens "
                         "(think_rec.model.tokenizer.THINK_TOKENS)")
    return tid


def _unpadded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``/``attention_mask`` for token-id rows (the layout ``recommend`` takes)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def think_ids(tokenizer_or_processor, prompt: str, rationale: str) -> list[int]:
    """Token ids of ``prompt <think>rationale</think>``: the layout of stage-2 training and of phase 2."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    body = tok(rationale, add_special_tokens=False)["input_ids"] if rationale else []
    return [*ids, _token_id(tok, THINK_OPEN), *body, _token_id(tok, THINK_CLOSE)]


def rationale_banned_ids(tokenizer, trie: SIDTrie) -> list[int]:
    """Tokens a rationale may not hold: SID codes, special (chat/vision) tokens, pads and a second ``<think>``;
    ``</think>`` stays allowed (it ends the rationale)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    close_id = _token_id(tok, THINK_CLOSE)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else close_id
    return sorted({*(i for seq in trie.item_of for i in seq), *tok.all_special_ids, _token_id(tok, THINK_OPEN),
                   pad_id} - {close_id})


def merge_scores(per_rationale: Sequence[Sequence[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """Mean-probability merge of several ranked lists (see the module docstring); top ``k``."""
    if len(per_rationale) == 1:
        return list(per_rationale[0])[:k]
    total: dict[str, float] = {}
    for ranked in per_rationale:
        for item, score in ranked:
            total[item] = total.get(item, 0.0) + math.exp(score)
    merged = [(item, math.log(p / len(per_rationale))) for item, p in total.items()]
    return sorted(merged, key=lambda x: -x[1])[:k]


@torch.no_grad()
def generate_rationales(model, tokenizer_or_processor, prompts: Sequence[str], trie: SIDTrie, *,
                        num_rationales: int = 1, do_sample: bool = False, temperature: float = 0.8,
                        top_p: float = 0.95, max_think_tokens: int = 96) -> list[list[list[int]]]:
    """Per prompt, ``num_rationales`` token-id sequences: ``prompt <think> rationale </think>``."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    open_id, close_id = _token_id(tok, THINK_OPEN), _token_id(tok, THINK_CLOSE)
    if num_rationales < 1:
        raise ValueError(f"num_rationales must be >= 1, got {num_rationales}")
    if num_rationales > 1 and not do_sample:
        raise ValueError("num_rationales > 1 needs do_sample=True (greedy decoding gives one rationale)")
    if max_think_tokens < 0:
        raise ValueError(f"max_think_tokens must be >= 0, got {max_think_tokens}")
    enc = _encode(tokenizer_or_processor, list(prompts))
    bases = [ids + [open_id] for ids in _unpadded(enc["input_ids"], enc["attention_mask"])]
    if max_think_tokens == 0:
        return [[b + [close_id]] * num_rationales for b in bases]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else close_id
    banned = rationale_banned_ids(tok, trie)
    inputs = {key: v.to(model.device) for key, v in left_pad(bases, pad_id).items()}
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    out = model.generate(**inputs, max_new_tokens=max_think_tokens, num_return_sequences=num_rationales,
                         eos_token_id=close_id, pad_token_id=pad_id, suppress_tokens=banned, num_beams=1,
                         **sampling)
    width = inputs["input_ids"].shape[1]
    result: list[list[list[int]]] = []
    for i, base in enumerate(bases):
        rows = []
        for row in out[i * num_rationales:(i + 1) * num_rationales, width:].tolist():
            think = row[:row.index(close_id)] if close_id in row else [t for t in row if t != pad_id]
            rows.append(base + think + [close_id])  # force-closed when the budget ran out
        result.append(rows)
    return result


@torch.no_grad()
def think_then_recommend(model, tokenizer_or_processor, prompts: Sequence[str], trie: SIDTrie, *, k: int = 10,
                         num_beams: int | None = None, num_rationales: int = 1, do_sample: bool = False,
                         temperature: float = 0.8, top_p: float = 0.95, max_think_tokens: int = 96,
                         exclude: Sequence[set[str]] | None = None) -> list[ThinkResult]:
    """Rationale(s) then up to ``k`` distinct catalog items per prompt (text prompts ending in the
    assistant's generation header, e.g. ``render_recommend_prompt(...).text``)."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    prompts = list(prompts)
    if exclude is not None and len(exclude) != len(prompts):
        raise ValueError(f"exclude has {len(exclude)} sets for {len(prompts)} prompts")
    seqs = generate_rationales(model, tokenizer_or_processor, prompts, trie, num_rationales=num_rationales,
                               do_sample=do_sample, temperature=temperature, top_p=top_p,
                               max_think_tokens=max_think_tokens)
    flat = [s for rows in seqs for s in rows]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else _token_id(tok, THINK_CLOSE)
    flat_exclude = None if exclude is None else [exclude[i] for i, rows in enumerate(seqs) for _ in rows]
    ranked = recommend(model, tokenizer_or_processor, left_pad(flat, pad_id), trie, k=k, num_beams=num_beams,
                       exclude=flat_exclude)
    open_id = _token_id(tok, THINK_OPEN)
    results, pos = [], 0
    for rows in seqs:
        texts = []
        for s in rows:
            start = len(s) - s[::-1].index(open_id)  # just after the last <think>
            texts.append(tok.decode(s[start:-1], skip_special_tokens=False).strip())
        results.append(ThinkResult(texts, merge_scores(ranked[pos:pos + len(rows)], k)))
        pos += len(rows)
    return results
