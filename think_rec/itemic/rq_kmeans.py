"""Residual k-means (RQ-KMeans): ``levels`` rounds of k-means, each on the previous round's residual.

Fast enough for 100k x 384-d x 3 levels x 256 codes on one core: k-means++ seeding on a subsample,
then a few Lloyd iterations with chunked matmul assignment (torch, float32).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

_CHUNK = 16384


@dataclass
class Quantized:
    """Output of a residual quantiser.

    ``codes[i, l]`` is item ``i``'s code at level ``l``; ``last_residual`` is what the last level
    quantised and ``last_codebook`` its centroids (collision resolution uses both)."""

    codes: np.ndarray  # (n, levels) int64
    codebook_sizes: list[int]
    last_residual: np.ndarray  # (n, d)
    last_codebook: np.ndarray  # (K, d)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid (squared L2) per row, computed in chunks: ``(labels, distances)``."""
    c_sq = (centroids * centroids).sum(1)
    labels, dists = [], []
    for start in range(0, len(x), _CHUNK):
        xb = x[start:start + _CHUNK]
        d = c_sq[None, :] - 2.0 * (xb @ centroids.T)
        best, idx = d.min(1)
        labels.append(idx)
        dists.append((best + (xb * xb).sum(1)).clamp_min(0))
    return torch.cat(labels), torch.cat(dists)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (one candidate per step) on ``x``."""
    x_sq = (x * x).sum(1)
    idx = torch.randint(len(x), (1,), generator=gen)
    chosen = [idx]
    dist = (x_sq - 2.0 * (x @ x[idx[0]]) + x_sq[idx]).clamp_min(0)
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:  # every point already coincides with a centroid
            idx = torch.randint(len(x), (1,), generator=gen)
        else:
            u = torch.rand(1, generator=gen, dtype=torch.float64) * total
            idx = torch.searchsorted(dist.cumsum(0, dtype=torch.float64), u).clamp_max(len(x) - 1)
        chosen.append(idx)
        dist = torch.minimum(dist, (x_sq - 2.0 * (x @ x[idx[0]]) + x_sq[idx]).clamp_min(0))
    return x[torch.cat(chosen)].clone()


def kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0,
           sample: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means; ``k`` is capped at the number of distinct rows. Returns ``(centroids, labels)``.

    Empty clusters are re-seeded with the points farthest from their centroid."""
    gen = torch.Generator().manual_seed(seed)
    k = min(k, len(x))
    sub = x[torch.randperm(len(x), generator=gen)[:max(sample, k)]]
    centroids = _kmeans_pp(sub, k, gen)
    for _ in range(iters):
        labels, dists = assign(x, centroids)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        empty = (counts == 0).nonzero().flatten()
        centroids = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        if len(empty):
            far = dists.topk(len(empty)).indices
            centroids[empty] = x[far]
    labels, _ = assign(x, centroids)
    return centroids, labels


def rq_kmeans(embeddings: np.ndarray, levels: int = 3, codebook_size: int = 256, iters: int = 10,
              seed: int = 0, progress: bool = True) -> Quantized:
    """Residual k-means codes for every row of ``embeddings`` (deterministic for a seed)."""
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"embeddings must be a non-empty (n, d) array, got shape {embeddings.shape}")
    residual = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).clone()
    codes, centroids = [], None
    for level in tqdm(range(levels), desc="rq-kmeans", disable=not progress):
        centroids, labels = kmeans(residual, codebook_size, iters=iters, seed=seed + 1000 * level)
        codes.append(labels)
        if level < levels - 1:
            residual -= centroids[labels]
    return Quantized(torch.stack(codes, 1).numpy().astype(np.int64), [codebook_size] * levels,
                     residual.numpy(), centroids.numpy())
