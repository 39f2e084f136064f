"""``evaluate_ranker``: one protocol for think_rec, SASRec and popularity.

Full-catalog ranking, leave-one-out. ``EXCLUDE_HISTORY`` (default False) is the single switch
for whether items already in a user's history may be recommended; every ranker here reads it,
so all systems are compared under the same rule (the target may legitimately be a repeat).
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

import datasets
import torch
from tqdm import tqdm

from think_rec.data.schema import column

from .metrics import aggregate

EXCLUDE_HISTORY = False
RankFn = Callable[[list[list[str]]], list[list[str]]]


def top_k_from_scores(scores: torch.Tensor, item_ids: Sequence[str], histories: Sequence[Sequence[str]],
                      k: int, exclude_history: bool = EXCLUDE_HISTORY) -> list[list[str]]:
    """Top-``k`` item ids per row of ``scores`` (users x items, columns in ``item_ids`` order)."""
    scores = scores.float().clone()
    if exclude_history:
        index = {item: i for i, item in enumerate(item_ids)}
        for row, hist in enumerate(histories):
            cols = [index[i] for i in hist if i in index]
            scores[row, cols] = float("-inf")
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices.tolist()
    return [[item_ids[j] for j in row] for row in top]


def evaluate_ranker(rank_fn: RankFn, examples: datasets.Dataset, ks: Sequence[int] = (5, 10),
                    batch_size: int = 256, progress: bool = True, desc: str = "evaluate") -> dict:
    """Metrics of ``rank_fn(histories) -> ranked item ids`` over ``examples`` (history, target)."""
    histories, targets = column(examples, "history"), column(examples, "target")
    rankings: list[list[str]] = []
    for start in tqdm(range(0, len(histories), batch_size), desc=desc, disable=not progress):
        batch = histories[start:start + batch_size]
        ranked = rank_fn(batch)
        if len(ranked) != len(batch):
            raise ValueError(f"rank_fn returned {len(ranked)} rankings for {len(batch)} histories")
        rankings.extend(ranked)
    return {**aggregate(rankings, targets, ks), "users": len(targets)}


def sample_users(examples: datasets.Dataset, n: int | None, seed: int = 0) -> datasets.Dataset:
    """A seeded sample of ``n`` rows (all rows when ``n`` is None or not smaller), in their original order."""
    if n is None or n >= len(examples):
        return examples
    return examples.select(sorted(random.Random(seed).sample(range(len(examples)), n)))


def generative_ranker(model, tokenizer, trie, make_prompt: Callable[[list[str]], str], k: int = 10,
                      num_beams: int | None = None, exclude_history: bool = EXCLUDE_HISTORY) -> RankFn:
    """A ``rank_fn`` for think_rec: prompts from histories, constrained beam search over the trie."""
    from think_rec.decoding import recommend

    def rank(histories: list[list[str]]) -> list[list[str]]:
        out = recommend(model, tokenizer, [make_prompt(h) for h in histories], trie, k=k, num_beams=num_beams,
                        exclude=[set(h) for h in histories] if exclude_history else None)
        return [[item for item, _ in row] for row in out]

    return rank
