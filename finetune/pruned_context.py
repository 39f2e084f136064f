"""Pruned context (OneRec-Think §4.2): keep the k history items closest to the target, in order.

The teacher explains a choice from a short, relevant history rather than the whole sequence:
each history item is scored by cosine similarity of its item embedding (``item_embeddings.npy``
written by ``think_rec.itemic.build.build_and_save``) to the target's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from think_rec.data.errors import DataError
from think_rec.itemic.build import load_embeddings


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Unit-norm rows (zero rows stay zero)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms == 0, 1.0, norms)


def _rows(items: Sequence[str], index: dict[str, int], where: str) -> list[int]:
    missing = [i for i in items if i not in index]
    if missing:
        raise DataError(where, None, "item_id", f"no embedding for item {missing[0]!r}")
    return [index[i] for i in items]


def _dedupe_latest(history: Sequence[str]) -> list[int]:
    """Positions of each item's latest occurrence, in chronological order."""
    last = {item: pos for pos, item in enumerate(history)}
    return sorted(last.values())


def prune_history(history: list[str], target: str, embeddings: np.ndarray, index: dict[str, int],
                  k: int = 10) -> list[str]:
    """The ``k`` (distinct) history items most cosine-similar to ``target``, in chronological order.

    Ties go to the more recent item; a repeated item counts once (its latest occurrence)."""
    return prune_batch([history], [target], embeddings, index, k=k, progress=False)[0]


def prune_batch(histories: Sequence[Sequence[str]], targets: Sequence[str], embeddings: np.ndarray,
                index: dict[str, int], k: int = 10, batch_size: int = 1024, progress: bool = True,
                normalised: bool = False) -> list[list[str]]:
    """``prune_history`` for many (history, target) pairs, scored as padded matrix products."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(histories) != len(targets):
        raise ValueError(f"{len(histories)} histories for {len(targets)} targets")
    emb = np.asarray(embeddings, dtype=np.float32) if normalised else normalise(embeddings)
    out: list[list[str]] = []
    starts = range(0, len(histories), batch_size)
    for start in tqdm(starts, desc="prune history", disable=not progress or len(starts) < 2):
        hist = histories[start:start + batch_size]
        keep = [_dedupe_latest(h) for h in hist]
        width = max((len(p) for p in keep), default=0)
        if width == 0:
            out.extend([] for _ in hist)
            continue
        rows = np.zeros((len(hist), width), dtype=np.int64)
        mask = np.zeros((len(hist), width), dtype=bool)
        for b, (h, pos) in enumerate(zip(hist, keep)):
            rows[b, :len(pos)] = _rows([h[p] for p in pos], index, f"example {start + b}: history")
            mask[b, :len(pos)] = True
        tgt = np.array(_rows(targets[start:start + batch_size], index, f"examples {start}+: target"))
        sims = np.einsum("bld,bd->bl", emb[rows], emb[tgt])
        sims = np.where(mask, sims, -np.inf)
        # stable sort on the reversed row: among equal scores the later position wins
        order = width - 1 - np.argsort(-sims[:, ::-1], axis=1, kind="stable")[:, :k]
        for b, (h, pos) in enumerate(zip(hist, keep)):
            chosen = sorted(int(j) for j in order[b] if mask[b, j])
            out.append([h[pos[j]] for j in chosen])
    return out


def prune_examples(examples, sid_dir: str | Path, k: int = 10, progress: bool = True) -> list[list[str]]:
    """Pruned histories for a dataset of ``history``/``target`` rows, with the embeddings saved
    beside the codebook in ``sid_dir``."""
    emb, ids = load_embeddings(sid_dir)
    cols = examples.select_columns(["history", "target"]).to_dict() if hasattr(examples, "select_columns") \
        else {"history": [e["history"] for e in examples], "target": [e["target"] for e in examples]}
    return prune_batch(cols["history"], cols["target"], emb, {i: n for n, i in enumerate(ids)}, k=k,
                       progress=progress)
