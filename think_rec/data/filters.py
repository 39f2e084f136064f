"""Filters that return a new ``RecDataset``: iterative k-core."""
from __future__ import annotations

from collections import Counter

import datasets

from .schema import INTERACTION_FEATURES, Interactions, RecDataset


def kcore(ds: RecDataset, k: int) -> RecDataset:
    """Keep interactions until every user and every item has at least ``k`` of them (iterated to a
    fixed point). The catalog is kept whole."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t = ds.interactions.table.to_dict()
    users, seqs, stamps = t["user_id"], t["item_ids"], t["timestamps"]
    rounds = 0
    while True:
        counts = Counter(i for s in seqs for i in s)
        weak = {i for i, c in counts.items() if c < k}
        short = any(len(s) < k for s in seqs)
        if not weak and not short:
            break
        rounds += 1
        kept_users, kept_seqs, kept_stamps = [], [], []
        for u, s, ts in zip(users, seqs, stamps):
            keep = [n for n, i in enumerate(s) if i not in weak]
            if len(keep) >= k:
                kept_users.append(u)
                kept_seqs.append([s[n] for n in keep])
                kept_stamps.append([ts[n] for n in keep] if ts else [])
        users, seqs, stamps = kept_users, kept_seqs, kept_stamps
    table = datasets.Dataset.from_dict({"user_id": users, "item_ids": seqs, "timestamps": stamps},
                                       features=INTERACTION_FEATURES)
    return RecDataset(ds.name, ds.catalog, Interactions(table), {**ds.extra_stats, "kcore": k, "kcore_rounds": rounds})
