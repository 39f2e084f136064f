"""The trie beam step shared by every engine, and the beam loop over an engine's ``child_logprobs``.

Scoring (the same on transformers and vLLM): an item's score is the sum of its code tokens' log-probabilities,
each a log-softmax over the SID tokens (``sid_logprobs``); ``<|sid_begin|>`` and ``<|sid_end|>`` are left out.
A beam is ``(prefix, score)`` with ``prefix = <|sid_begin|> codes...``; an engine's ``child_logprobs`` maps
prefixes to their ``Children``: the allowed trie children's token ids and their log-probabilities (float32).
"""
from __future__ import annotations

from typing import Awaitable, Callable, Sequence

import torch

from .trie import SIDTrie

Beam = tuple[tuple[int, ...], float]
Children = tuple[torch.Tensor, torch.Tensor]  # (token ids, log-probabilities)
ChildLogprobs = Callable[[list[tuple[int, ...]]], Awaitable[list[Children]]]


def sid_logprobs(logits: torch.Tensor, sid_ids: torch.Tensor) -> torch.Tensor:
    """Log-softmax of ``logits`` (last dim) over the SID tokens ``sid_ids``, ``-inf`` elsewhere."""
    out = torch.full_like(logits, float("-inf"))
    out[..., sid_ids] = logits[..., sid_ids].log_softmax(-1)
    return out


def expand(beams: Sequence[Beam], children: Sequence[Children], width: int) -> list[tuple[int, Beam]]:
    """The ``width`` best one-token extensions ``(parent index, beam)`` of ``beams`` (``children[b]`` those of
    beam ``b``), best first; ties keep beam then token order, ``-inf`` scores are dropped."""
    cands = []
    for b, ((_, score), (tokens, logprobs)) in enumerate(zip(beams, children)):
        cands.extend(zip([b] * len(tokens), tokens.tolist(), (score + logprobs).tolist()))
    cands.sort(key=lambda c: -c[2])
    return [(b, (beams[b][0] + (t,), s)) for b, t, s in cands[:width] if s > float("-inf")]


def ranked_items(trie: SIDTrie, beams: Sequence[Beam]) -> list[tuple[str, float]]:
    """The items that complete beams (full code prefixes), with their scores."""
    return [(trie.item_at(p + (trie.end_token,)), s) for p, s in beams]


async def trie_beam_search(child_logprobs: ChildLogprobs, trie: SIDTrie, width: int) -> list[Beam]:
    """The best ``width`` full code prefixes, best first."""
    beams: list[Beam] = [((trie.first_token,), 0.0)]
    for _ in range(trie.levels):
        beams = [beam for _, beam in expand(beams, await child_logprobs([p for p, _ in beams]), width)]
    return beams
