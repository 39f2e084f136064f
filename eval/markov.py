"""Item-transition (first-order Markov) baseline: "what did people pick right after this item?".

``MarkovModel`` counts, over the training sequences, how often item ``j`` directly follows item ``i``.
A user is scored from the last ``last_n`` items of their history, the most recent weighing 1, the one
before ``decay``, then ``decay**2`` ...::

    score(j) = sum_{t < last_n} decay**t * count(history[-1 - t] -> j)

Ranking sorts by score, breaks ties by training popularity, and fills the rest of the ``k`` slots with
the most popular items. Plain dicts and ``Counter``s: ranking thousands of users takes seconds.

Fit it on the sequences the evaluated histories come from (``split.train["item_ids"]`` for valid; for
test, the train sequences each extended with the valid target is fair too: that is the test history).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from .evaluate import RankFn


@dataclass
class MarkovConfig:
    last_n: int = 5  # history items that vote (the most recent ones)
    decay: float = 0.5  # weight of each older vote relative to the next newer one

    def __post_init__(self):
        if self.last_n < 1:
            raise ValueError(f"MarkovConfig.last_n must be >= 1, got {self.last_n}")
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"MarkovConfig.decay must be in [0, 1], got {self.decay}")


class MarkovModel:
    """Successor counts ``transitions[i][j]`` (``j`` right after ``i``) and item counts ``popularity``."""

    def __init__(self, train_sequences: Iterable[Sequence[str]], config: MarkovConfig | None = None):
        self.config = config or MarkovConfig()
        self.transitions: dict[str, Counter] = defaultdict(Counter)
        self.popularity: Counter = Counter()
        for seq in train_sequences:
            seq = list(seq)
            self.popularity.update(seq)
            for a, b in zip(seq, seq[1:]):
                self.transitions[a][b] += 1
        self.transitions = dict(self.transitions)
        # most popular first; equal counts keep first appearance (Counter.most_common is stable)
        self.by_popularity: list[str] = [item for item, _ in self.popularity.most_common()]
        self.popularity_rank: dict[str, int] = {item: r for r, item in enumerate(self.by_popularity)}

    @classmethod
    def fit(cls, train_sequences: Iterable[Sequence[str]], config: MarkovConfig | None = None) -> "MarkovModel":
        """Same as the constructor."""
        return cls(train_sequences, config)

    def scores(self, history: Sequence[str]) -> dict[str, float]:
        """``{item: score}`` for every item that followed one of the last ``last_n`` history items in
        training (items absent score 0). ``history`` is chronological (most recent last); the most recent
        item's successors count with weight 1, the previous item's with ``decay``, then ``decay**2`` ...
        Items in the history are not removed here (``rank`` does that with ``exclude``)."""
        out: dict[str, float] = defaultdict(float)
        weight = 1.0
        for item in reversed(list(history)[-self.config.last_n:]):
            for succ, count in self.transitions.get(item, {}).items():
                out[succ] += weight * count
            weight *= self.config.decay
        return dict(out)

    def rank(self, history: Sequence[str], k: int = 10, exclude: set[str] | None = None) -> list[str]:
        """The top ``k`` items: by ``scores(history)`` descending (zero scores dropped), ties by training
        popularity, then filled with the most popular items; nothing in ``exclude`` is returned."""
        exclude = exclude or set()
        worst = len(self.popularity_rank)
        scored = [(s, item) for item, s in self.scores(history).items() if s > 0 and item not in exclude]
        scored.sort(key=lambda si: (-si[0], self.popularity_rank.get(si[1], worst), si[1]))
        ranked = [item for _, item in scored[:k]]
        if len(ranked) < k:
            taken = set(ranked)
            for item in self.by_popularity:
                if item not in taken and item not in exclude:
                    ranked.append(item)
                    if len(ranked) == k:
                        break
        return ranked


def markov_ranker(model: MarkovModel, k: int = 10, exclude_history: bool = False) -> RankFn:
    """A ``rank_fn`` over ``model``; ``exclude_history`` removes each user's history items (see
    ``think_rec.eval.evaluate.has_repeats`` for choosing it)."""

    def rank(histories: list[list[str]]) -> list[list[str]]:
        return [model.rank(h, k, set(h) if exclude_history else None) for h in histories]

    return rank
