"""Stage-3 rewards (OneRec-Think §4.3): a sampled rationale is scored by the items a constrained beam search
finds after it, not by a pass/fail check that is almost always 0 in recommendation.

``BeamRollout`` ranks the catalog once per completion from the current policy, as the model is served
(``think_rec.decoding.ranking.rank``: the trie beams of width ``num_beams`` fused with the model's prior and item
head; with no ``prior``, the beams alone), and caches it for the batch, so every reward below reads the same
ranking (its top ``num_beams`` items, called beams below):

- ``rollout_beam``: max over beams of the leading SID levels matching the target, divided by the levels;
- ``rank``: ``1 / log2(rank + 2)`` for the target's rank among the beams, 0 if absent (MiniOneRec-style);
- ``format``: -1 when the rationale has no ``</think>`` (cut by the token budget: vLLM rollouts; transformers
  rollouts are closed by the rationale loop), else 0;
- ``faithful``: the share of the rationale's claims about the next item (``decoding.claims``: category, brand,
  price band, "like <cited item>") that hold for the top item, 0 for a rationale that claims nothing (needs
  ``BeamRollout.checker``).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from think_rec.decoding.claims import ClaimChecker, holding
from think_rec.decoding.prior import CollaborativePrior
from think_rec.decoding.ranking import rank
from think_rec.decoding.think import citation_titles, show_rationale
from think_rec.decoding.trie import SIDTrie

from .rationale_filters import citation_title

RewardFn = Callable[..., list[float]]
REWARDS = ("rollout_beam", "rank", "format", "faithful")


def prefix_match(beam_codes: Sequence[Sequence[int]], target_codes: Sequence[int]) -> float:
    """Max over beams of the number of leading levels equal to ``target_codes``, normalised to [0, 1]."""
    best = 0
    for codes in beam_codes:
        n = 0
        while n < len(target_codes) and n < len(codes) and codes[n] == target_codes[n]:
            n += 1
        best = max(best, n)
    return best / len(target_codes)


def rank_reward(beam_items: Sequence[str], target: str) -> float:
    """``1 / log2(rank + 2)`` of ``target`` among ``beam_items`` (best first), 0 when absent."""
    return 1.0 / math.log2(list(beam_items).index(target) + 2) if target in beam_items else 0.0


class BeamRollout:
    """The served ranking after ``prompt <think> completion`` under the policy ``model`` (set once the trainer wraps
    it); ``prior`` (None: the beams alone) and ``exclude_history`` as the model is served; ``checker`` (the
    catalog's claims) for the ``faithful`` reward."""

    def __init__(self, tokenizer, trie: SIDTrie, close_id: int, num_beams: int = 32,
                 prior: CollaborativePrior | None = None, exclude_history: bool = False,
                 checker: ClaimChecker | None = None):
        self.tokenizer, self.trie, self.close_id, self.num_beams = tokenizer, trie, close_id, num_beams
        self.prior, self.exclude_history, self.checker = prior, exclude_history, checker
        self.model = None
        self._key: tuple | None = None
        self._beams: list[list[str]] = []

    def closed(self, completion: Sequence[int]) -> list[int]:
        """The completion up to and including its first ``</think>`` (one appended when it has none)."""
        ids = list(completion)
        return ids[:ids.index(self.close_id) + 1] if self.close_id in ids else [*ids, self.close_id]

    def beams(self, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]],
              histories: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
        """Each completion's top ``num_beams`` items, best first (computed once per batch)."""
        histories = [list(h) for h in histories] if histories is not None else [[] for _ in prompts]
        key = (tuple(prompts), tuple(tuple(c) for c in completion_ids))
        if key != self._key:
            if self.model is None:
                raise RuntimeError("BeamRollout.model is not set")
            rows = [self.tokenizer(p, add_special_tokens=False)["input_ids"] + self.closed(c)
                    for p, c in zip(prompts, completion_ids)]
            was_training = self.model.training
            self.model.eval()
            banned = [set(h) if self.exclude_history else set() for h in histories]
            with torch.no_grad():
                ranked = rank(self.model, self.tokenizer, rows, histories, self.trie, self.prior, k=self.num_beams,
                              num_beams=self.num_beams, banned=banned)
            self.model.train(was_training)
            self._key, self._beams = key, [[item for item, _ in r] for r in ranked]
        return self._beams

    def faithfulness(self, completion: Sequence[int], history: Sequence[str], top: str | None) -> float:
        """The share of the rationale's claims that hold for the item ``top`` (0 without claims or item)."""
        items = self.checker.items
        titles = citation_titles(self.tokenizer, self.trie, {i: citation_title(items[i]) for i in history})
        text, _ = show_rationale(self.tokenizer, self.closed(completion)[:-1], titles)
        claims = self.checker.claims(text, history)
        return holding(claims, items[top]) if len(claims) and top is not None else 0.0

    def reward_functions(self, codes: dict[str, Sequence[int]], names: Sequence[str] = REWARDS) -> list[RewardFn]:
        """TRL reward functions (named as in ``REWARDS``); ``codes`` maps item ids to their SID codes."""
        def rollout_beam(prompts, completions, completion_ids, target, history=None, **_):
            beams = self.beams(prompts, completion_ids, history)
            return [prefix_match([codes[i] for i in b], codes[t]) for b, t in zip(beams, target)]

        def rank(prompts, completions, completion_ids, target, history=None, **_):
            return [rank_reward(b, t) for b, t in zip(self.beams(prompts, completion_ids, history), target)]

        def format(prompts, completions, completion_ids, **_):  # noqa: A001 - the logged reward name
            return [0.0 if self.close_id in c else -1.0 for c in completion_ids]

        def faithful(prompts, completions, completion_ids, history, **_):
            beams = self.beams(prompts, completion_ids, history)
            return [self.faithfulness(c, h, b[0] if b else None) for c, h, b in zip(completion_ids, history, beams)]

        if "faithful" in names and self.checker is None:
            raise ValueError("the faithful reward needs BeamRollout.checker (the catalog's ClaimChecker)")
        funcs = {"rollout_beam": rollout_beam, "rank": rank, "format": format, "faithful": faithful}
        unknown = [n for n in names if n not in funcs]
        if unknown:
            raise ValueError(f"unknown reward {unknown[0]!r}; rewards: {REWARDS}")
        return [funcs[n] for n in names]
