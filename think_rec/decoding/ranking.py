"""The served ranking: the model's constrained beams fused with the collaborative prior. One rule, every caller.

Candidates are the trie beam search's items plus the prior's top items (``CollaborativePrior.candidates``) and,
for a model with item tokens, the item-level head's top items; never a banned item. Each is scored by the
model's log-probability of its SID (``trie_beam`` scoring) + ``item_weight * item head log-prob`` +
``weight * log1p(prior score)``. With both weights 0 (or no prior) the ranking is the beam search alone.

``rank`` runs it on transformers for a batch of prompts (eval, the ``hf`` engine, GRPO's rewards);
``rank_steps`` runs it over any engine's ``child_logprobs`` (vLLM, Think-Ahead); both end in ``fuse``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import torch

from .prior import CollaborativePrior
from .search import encode, search_and_score
from .trie import SIDTrie
from .trie_beam import ChildLogprobs, ranked_items, trie_beam_search

Ranked = list[tuple[str, float]]
ItemLogprobs = Callable[[], Awaitable[torch.Tensor]]  # an engine's item-head log-probs (``trie.items`` order)


@dataclass
class Candidates:
    """One request's candidates: the beams' items and the extra items (the prior's, the item head's), each with
    the model's SID log-probability; the prior's scores for the request's history; the item head's log-prob of
    every candidate (empty for a model without item tokens)."""

    beams: Ranked
    extra: Ranked = field(default_factory=list)
    prior: dict[str, float] = field(default_factory=dict)
    items: dict[str, float] = field(default_factory=dict)


def fuse(cands: Candidates, weight: float, k: int, item_weight: float = 0.0) -> Ranked:
    """The top ``k`` ``(item, fused score)``: SID log-prob + ``item_weight * item log-prob`` +
    ``weight * log1p(prior)``; both weights 0 = the beams alone."""
    if not weight and not (item_weight and cands.items):
        return cands.beams[:k]
    item_weight = item_weight if cands.items else 0.0
    scored = [(item, s + weight * math.log1p(cands.prior.get(item, 0.0))
               + (item_weight * cands.items[item] if item_weight else 0.0))
              for item, s in cands.beams + cands.extra]
    return sorted(scored, key=lambda c: -c[1])[:k]


def extra_items(prior: CollaborativePrior | None, history: Sequence[str], beams: Ranked, banned: set[str],
                trie: SIDTrie | None = None, item_row: torch.Tensor | None = None, top: int = 0) -> list[str]:
    """The prior's candidates and the item head's top ``top`` (``item_row``: its log-probs) that the beams lack."""
    have = {item for item, _ in beams}
    extra = [i for i in prior.candidates(history, banned) if i not in have] if prior is not None else []
    if item_row is not None:
        have.update(extra)
        order = item_row.topk(min(len(item_row), top + len(have) + len(banned))).indices.tolist()
        extra += [i for i in (trie.items[n] for n in order)
                  if i not in have and i not in banned][:top]
    return extra


def _item_scores(trie: SIDTrie, item_row: torch.Tensor | None, cands: Sequence[str]) -> dict[str, float]:
    return {} if item_row is None else {i: float(item_row[trie.item_index[i]]) for i in cands}


def fusion_weights(prior: CollaborativePrior | None, weight: float | None = None,
                   item_weight: float | None = None) -> tuple[float, float]:
    """``(weight, item_weight)``: the given ones, else the prior's (both 0 without a prior)."""
    w = (prior.weight if prior is not None else 0.0) if weight is None else weight
    iw = (prior.item_weight if prior is not None else 0.0) if item_weight is None else item_weight
    return w, iw


def candidates(model, tokenizer, prompts: Sequence[str | Sequence[int]], histories: Sequence[Sequence[str]],
               trie: SIDTrie, prior: CollaborativePrior | None, *, num_beams: int,
               banned: Sequence[set[str]] | None = None, items: bool = True, batch_size: int = 64) -> list[Candidates]:
    """Per prompt, its ``Candidates`` on transformers (one batched beam search and scoring over one prefill); the
    item head's scores when ``items`` and the model has item tokens."""
    if len(histories) != len(prompts):
        raise ValueError(f"{len(histories)} histories for {len(prompts)} prompts")
    ids = encode(tokenizer, prompts)
    bans = list(banned) if banned is not None else [set() for _ in ids]
    items = items and trie.item_token_ids is not None

    def extra(i: int, beams: Ranked, row: torch.Tensor | None) -> list[str]:
        return extra_items(prior, histories[i], beams, bans[i], trie, row, num_beams)

    beams, extras, rows = search_and_score(model, tokenizer, ids, trie, extra, num_beams=num_beams, exclude=bans,
                                           items=items, batch_size=batch_size)
    return [Candidates(b, e, prior.markov.scores(h) if prior is not None else {},
                       _item_scores(trie, r, [i for i, _ in b + e]))
            for b, e, h, r in zip(beams, extras, histories, rows)]


def rank(model, tokenizer, prompts: Sequence[str | Sequence[int]], histories: Sequence[Sequence[str]], trie: SIDTrie,
         prior: CollaborativePrior | None, *, k: int, num_beams: int, banned: Sequence[set[str]] | None = None,
         weight: float | None = None, item_weight: float | None = None, batch_size: int = 64) -> list[Ranked]:
    """The served top ``k`` per prompt on transformers; the weights default to the prior's (0 without one)."""
    w, iw = fusion_weights(prior, weight, item_weight)
    cands = candidates(model, tokenizer, prompts, histories, trie, prior if w else None,
                       num_beams=max(num_beams, k), banned=banned, items=bool(iw), batch_size=batch_size)
    return [fuse(c, w, k, iw) for c in cands]


async def score_steps(child_logprobs: ChildLogprobs, trie: SIDTrie, items: Sequence[str]) -> list[float]:
    """The log-probability of each item's SID, level by level through an engine's ``child_logprobs``."""
    codes = [trie.tokens_of[i][:-1] for i in items]  # <|sid_begin|> c1..cL
    scores = [0.0] * len(items)
    for level in range(1, trie.levels + 1):
        prefixes = sorted({c[:level] for c in codes})
        children = dict(zip(prefixes, await child_logprobs(prefixes)))
        for n, c in enumerate(codes):
            tokens, logprobs = children[c[:level]]
            scores[n] += float(logprobs[tokens.tolist().index(c[level])])
    return scores


async def rank_steps(child_logprobs: ChildLogprobs, trie: SIDTrie, history: Sequence[str],
                     prior: CollaborativePrior | None, *, k: int, num_beams: int, banned: set[str] = frozenset(),
                     weight: float | None = None, item_logprobs: ItemLogprobs | None = None) -> Ranked:
    """``rank`` for one request over an engine's ``child_logprobs`` (already bound to its prompt and bans) and,
    for a model with item tokens, its ``item_logprobs``."""
    beams = ranked_items(trie, await trie_beam_search(child_logprobs, trie, max(num_beams, k)))
    return await fuse_steps(child_logprobs, trie, beams, history, prior, k=k, banned=banned, weight=weight,
                            item_logprobs=item_logprobs, item_top=max(num_beams, k))


async def fuse_steps(child_logprobs: ChildLogprobs, trie: SIDTrie, beams: Ranked, history: Sequence[str],
                     prior: CollaborativePrior | None, *, k: int, banned: set[str] = frozenset(),
                     weight: float | None = None, item_logprobs: ItemLogprobs | None = None,
                     item_top: int = 30) -> Ranked:
    """``fuse`` of ``beams`` (found by any search), the prior's items and the item head's, scored through
    ``child_logprobs`` (and ``item_logprobs``)."""
    w, iw = fusion_weights(prior, weight)
    iw = iw if item_logprobs is not None and trie.item_token_ids is not None else 0.0
    if not w and not iw:
        return beams[:k]
    row = await item_logprobs() if iw else None
    extra = extra_items(prior if w else None, history, beams, set(banned), trie, row, item_top)
    scores = await score_steps(child_logprobs, trie, extra)
    cands = Candidates(beams, list(zip(extra, scores)), prior.markov.scores(history) if w else {},
                       _item_scores(trie, row, [i for i, _ in beams] + extra))
    return fuse(cands, w, k, iw)
