"""Popularity baseline: rank every item by its count in the training sequences."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from .evaluate import RankFn


def popularity_ranker(train_sequences: Iterable[Sequence[str]], k: int = 10,
                      exclude_history: bool = False) -> RankFn:
    """``rank_fn`` returning the ``k`` most frequent training items (ties by first appearance);
    ``exclude_history`` skips each user's history items."""
    counts = Counter(i for seq in train_sequences for i in seq)
    order = [item for item, _ in counts.most_common()]

    def rank(histories: list[list[str]]) -> list[list[str]]:
        if not exclude_history:
            return [order[:k]] * len(histories)
        out = []
        for hist in histories:
            seen = set(hist)
            ranked = []
            for item in order:
                if item not in seen:
                    ranked.append(item)
                    if len(ranked) == k:
                        break
            out.append(ranked)
        return out

    return rank
