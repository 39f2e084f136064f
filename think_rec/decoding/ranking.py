"""The served ranking: the model's constrained beams fused with the collaborative prior. One rule, every caller.

Candidates are the trie beam search's items plus the prior's top items (``CollaborativePrior.candidates``),
never a banned item; each is scored by the model's log-probability of its SID (``trie_beam`` scoring) +
``weight * log1p(prior score)``. With weight 0 (or no prior) the ranking is the beam search alone.

``rank`` runs it on transformers for a batch of prompts (eval, the ``hf`` engine, GRPO's rewards);
``rank_steps`` runs it over any engine's ``child_logprobs`` (vLLM, Think-Ahead); both end in ``fuse``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from .prior import CollaborativePrior
from .search import encode, search_and_score
from .trie import SIDTrie
from .trie_beam import ChildLogprobs, ranked_items, trie_beam_search

Ranked = list[tuple[str, float]]


@dataclass
class Candidates:
    """One request's candidates: the beams' items and the prior's extra items, each with the model's
    log-probability, and the prior's scores for the request's history."""

    beams: Ranked
    extra: Ranked = field(default_factory=list)
    prior: dict[str, float] = field(default_factory=dict)


def fuse(cands: Candidates, weight: float, k: int) -> Ranked:
    """The top ``k`` ``(item, fused score)``: log-prob + ``weight * log1p(prior)``; weight 0 = the beams alone."""
    if not weight:
        return cands.beams[:k]
    scored = [(item, s + weight * math.log1p(cands.prior.get(item, 0.0))) for item, s in cands.beams + cands.extra]
    return sorted(scored, key=lambda c: -c[1])[:k]


def prior_extra(prior: CollaborativePrior | None, history: Sequence[str], beams: Ranked, banned: set[str]) -> list[str]:
    """The prior's candidates that the beams lack (none without a prior)."""
    if prior is None:
        return []
    have = {item for item, _ in beams}
    return [i for i in prior.candidates(history, banned) if i not in have]


def _weight(prior: CollaborativePrior | None, weight: float | None) -> float:
    return (prior.weight if prior is not None else 0.0) if weight is None else weight


def candidates(model, tokenizer, prompts: Sequence[str | Sequence[int]], histories: Sequence[Sequence[str]],
               trie: SIDTrie, prior: CollaborativePrior | None, *, num_beams: int,
               banned: Sequence[set[str]] | None = None, batch_size: int = 64) -> list[Candidates]:
    """Per prompt, its ``Candidates`` on transformers (one batched beam search and scoring over one prefill)."""
    if len(histories) != len(prompts):
        raise ValueError(f"{len(histories)} histories for {len(prompts)} prompts")
    ids = encode(tokenizer, prompts)
    bans = list(banned) if banned is not None else [set() for _ in ids]
    beams, extra = search_and_score(model, tokenizer, ids, trie,
                                    lambda i, b: prior_extra(prior, histories[i], b, bans[i]),
                                    num_beams=num_beams, exclude=bans, batch_size=batch_size)
    return [Candidates(b, e, prior.markov.scores(h) if prior is not None else {})
            for b, e, h in zip(beams, extra, histories)]


def rank(model, tokenizer, prompts: Sequence[str | Sequence[int]], histories: Sequence[Sequence[str]], trie: SIDTrie,
         prior: CollaborativePrior | None, *, k: int, num_beams: int, banned: Sequence[set[str]] | None = None,
         weight: float | None = None, batch_size: int = 64) -> list[Ranked]:
    """The served top ``k`` per prompt on transformers; ``weight`` defaults to the prior's (0 without one)."""
    w = _weight(prior, weight)
    cands = candidates(model, tokenizer, prompts, histories, trie, prior if w else None,
                       num_beams=max(num_beams, k), banned=banned, batch_size=batch_size)
    return [fuse(c, w, k) for c in cands]


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
                     weight: float | None = None) -> Ranked:
    """``rank`` for one request over an engine's ``child_logprobs`` (already bound to its prompt and bans)."""
    beams = ranked_items(trie, await trie_beam_search(child_logprobs, trie, max(num_beams, k)))
    return await fuse_steps(child_logprobs, trie, beams, history, prior, k=k, banned=banned, weight=weight)


async def fuse_steps(child_logprobs: ChildLogprobs, trie: SIDTrie, beams: Ranked, history: Sequence[str],
                     prior: CollaborativePrior | None, *, k: int, banned: set[str] = frozenset(),
                     weight: float | None = None) -> Ranked:
    """``fuse`` of ``beams`` (found by any search) and the prior's items, scored through ``child_logprobs``."""
    w = _weight(prior, weight)
    if not w:
        return beams[:k]
    extra = prior_extra(prior, history, beams, set(banned))
    scores = await score_steps(child_logprobs, trie, extra)
    return fuse(Candidates(beams, list(zip(extra, scores)), prior.markov.scores(history)), w, k)
