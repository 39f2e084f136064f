"""``evaluate_ranker``: one protocol for think_rec, SASRec and popularity.

Full-catalog ranking, leave-one-out. Whether items already in a user's history may be recommended
is an explicit ``exclude_history`` option of every ranker (``top_k_from_scores``, ``rec.think_rec_ranker``,
``popularity_ranker``, ``sasrec_ranker``/``train_sasrec``, ``markov_ranker``); pass the same value to all
systems of one comparison. It is chosen from train + valid only (``think_rec.data.split.history_exclusion``):
a dataset where nobody interacts with an item twice (Amazon reviews) excludes, one with repeats does not (the
target may legitimately be a repeat); a trained model records it in its ``served.json``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import datasets
import torch
from tqdm import tqdm

from think_rec.data.schema import column

from .metrics import aggregate

RankFn = Callable[[list[list[str]]], list[list[str]]]


def top_k_from_scores(scores: torch.Tensor, item_ids: Sequence[str], histories: Sequence[Sequence[str]],
                      k: int, exclude_history: bool = False) -> list[list[str]]:
    """Top-``k`` item ids per row of ``scores`` (users x items, columns in ``item_ids`` order); with
    ``exclude_history`` no row returns an item of its ``histories`` row."""
    scores = scores.float().clone()
    if exclude_history:
        index = {item: i for i, item in enumerate(item_ids)}
        for row, hist in enumerate(histories):
            cols = [index[i] for i in hist if i in index]
            scores[row, cols] = float("-inf")
    values, top = scores.topk(min(k, scores.shape[1]), dim=1)
    if not exclude_history:
        return [[item_ids[j] for j in row] for row in top.tolist()]
    keep = (values > float("-inf")).tolist()  # fewer than k items left outside the history
    return [[item_ids[j] for j, ok in zip(row, oks) if ok] for row, oks in zip(top.tolist(), keep)]


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
