"""Item-transition (first-order Markov) baseline: "what did people pick right after this item?".

The model (``MarkovModel``) lives in ``think_rec.decoding.prior``, where it is also the served ranking's
collaborative prior. Ranking sorts by score, breaks ties by training popularity, and fills the rest of the ``k``
slots with the most popular items. Plain dicts and ``Counter``s: ranking thousands of users takes seconds.

Fit it on the sequences the evaluated histories come from (``split.train["item_ids"]`` for valid; for
test, the train sequences each extended with the valid target is fair too: that is the test history).
"""
from __future__ import annotations

from think_rec.decoding.prior import MarkovConfig, MarkovModel

from .evaluate import RankFn

__all__ = ["MarkovConfig", "MarkovModel", "markov_ranker"]


def markov_ranker(model: MarkovModel, k: int = 10, exclude_history: bool = False) -> RankFn:
    """A ``rank_fn`` over ``model``; ``exclude_history`` removes each user's history items (see
    ``think_rec.data.split.history_exclusion`` for choosing it)."""

    def rank(histories: list[list[str]]) -> list[list[str]]:
        return [model.rank(h, k, set(h) if exclude_history else None) for h in histories]

    return rank
