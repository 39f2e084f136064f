"""Leave-one-out ranking metrics: one target per user, rank is 1-based."""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def rank_of(ranked: Sequence[str], target: str) -> int | None:
    """1-based position of ``target`` in ``ranked`` (None if absent)."""
    for i, item in enumerate(ranked):
        if item == target:
            return i + 1
    return None


def recall_at_k(ranked: Sequence[str], target: str, k: int) -> float:
    r = rank_of(ranked[:k], target)
    return 0.0 if r is None else 1.0


def ndcg_at_k(ranked: Sequence[str], target: str, k: int) -> float:
    """``1 / log2(rank + 1)`` when the target is in the top ``k``, else 0 (ideal DCG is 1)."""
    r = rank_of(ranked[:k], target)
    return 0.0 if r is None else 1.0 / math.log2(r + 1)


def mrr(ranked: Sequence[str], target: str, k: int | None = None) -> float:
    r = rank_of(ranked if k is None else ranked[:k], target)
    return 0.0 if r is None else 1.0 / r


def aggregate(rankings: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = (5, 10)) -> dict:
    """Means over users: ``recall@k``, ``ndcg@k`` for each k, and ``mrr`` (within the largest k)."""
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings for {len(targets)} targets")
    if not targets:
        raise ValueError("no examples to evaluate")
    n = len(targets)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = sum(recall_at_k(r, t, k) for r, t in zip(rankings, targets)) / n
    for k in ks:
        out[f"ndcg@{k}"] = sum(ndcg_at_k(r, t, k) for r, t in zip(rankings, targets)) / n
    out["mrr"] = sum(mrr(r, t, max(ks)) for r, t in zip(rankings, targets)) / n
    return out


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of ``values`` (0 for fewer than two)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def ranked_metrics(rankings: Sequence[Sequence[str]], targets: Sequence[str],
                   keys: Sequence[str] | None = None) -> dict[str, float]:
    """``aggregate`` at 5 and 10 (only ``keys`` when given) and ``ndcg@10_se``, the standard error of NDCG@10 over
    users."""
    metrics = aggregate(rankings, targets, (5, 10))
    per_user = [ndcg_at_k(r, t, 10) for r, t in zip(rankings, targets)]
    return {**{m: v for m, v in metrics.items() if keys is None or m in keys}, "ndcg@10_se": standard_error(per_user)}
