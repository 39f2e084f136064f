"""Fuse modality embeddings: L2-normalise each, weight it, concatenate."""
from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Unit rows; all-zero rows (item lacks this modality) stay zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x, dtype=np.float32), where=norm > 0)


def fuse(parts: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
    """``concat_m(weight_m * normalise(parts[m]))``; a missing weight is 1."""
    if not parts:
        raise ValueError("fuse: no modality embeddings given")
    weights = weights or {}
    unknown = set(weights) - set(parts)
    if unknown:
        raise ValueError(f"fuse: weights for modalities not encoded: {sorted(unknown)}")
    n = {len(v) for v in parts.values()}
    if len(n) != 1:
        raise ValueError(f"fuse: modalities disagree on item count: { {k: len(v) for k, v in parts.items()} }")
    return np.concatenate([float(weights.get(m, 1.0)) * l2_normalise(np.asarray(x, dtype=np.float32))
                           for m, x in parts.items()], axis=1)
