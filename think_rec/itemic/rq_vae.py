"""RQ-VAE (TIGER / LC-Rec): an MLP autoencoder whose latent is residual-vector-quantised.

Codebooks are k-means-initialised on the first batch; training uses the straight-through
estimator with codebook + commitment losses, and re-seeds codes left unused in an epoch."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .rq_kmeans import Quantized, kmeans


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder -> ``levels`` residual codebooks of ``codebook_size`` x ``latent_dim`` -> decoder."""

    def __init__(self, in_dim: int, levels: int = 3, codebook_size: int = 256, latent_dim: int = 32,
                 hidden: tuple[int, ...] = (256, 128), beta: float = 0.25):
        super().__init__()
        self.encoder = _mlp([in_dim, *hidden, latent_dim])
        self.decoder = _mlp([latent_dim, *hidden[::-1], in_dim])
        self.codebooks = nn.ParameterList(nn.Parameter(torch.zeros(codebook_size, latent_dim))
                                          for _ in range(levels))
        self.beta = beta

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        """Residual k-means on the encoded batch (codes beyond the batch size copy random rows)."""
        residual = self.encoder(x)
        gen = torch.Generator().manual_seed(seed)
        for level, book in enumerate(self.codebooks):
            centroids, labels = kmeans(residual, len(book), seed=seed + level)
            extra = len(book) - len(centroids)
            if extra:
                fill = residual[torch.randint(len(residual), (extra,), generator=gen)]
                centroids = torch.cat([centroids, fill + 1e-3 * torch.randn(fill.shape, generator=gen)])
            book.copy_(centroids)
            residual = residual - centroids[labels]

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_q, codes, vq_loss, last_residual)`` by greedy nearest code per level."""
        residual, z_q, codes, loss = z, torch.zeros_like(z), [], z.new_zeros(())
        for book in self.codebooks:
            last = residual
            idx = torch.cdist(residual, book).argmin(1)
            e = book[idx]
            loss = loss + F.mse_loss(e, residual.detach()) + self.beta * F.mse_loss(residual, e.detach())
            codes.append(idx)
            z_q = z_q + e
            residual = residual - e.detach()
        return z_q, torch.stack(codes, 1), loss, last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        z_q, codes, vq_loss, _ = self.quantise(z)
        recon = self.decoder(z + (z_q - z).detach())  # straight-through
        return F.mse_loss(recon, x) + vq_loss, codes, recon


def rq_vae(embeddings: np.ndarray, levels: int = 3, codebook_size: int = 256, epochs: int = 30,
           batch_size: int = 1024, lr: float = 1e-3, latent_dim: int = 32, seed: int = 0,
           progress: bool = True) -> Quantized:
    """Train an RQ-VAE on ``embeddings`` and return every row's codes (deterministic for a seed)."""
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"embeddings must be a non-empty (n, d) array, got shape {embeddings.shape}")
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    k = min(codebook_size, len(x))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = RQVAE(x.shape[1], levels, k, latent_dim)
        order = torch.randperm(len(x), generator=gen)
        model.init_codebooks(x[order[:max(batch_size, 4 * k)]], seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        bar = tqdm(range(epochs), desc="rq-vae", disable=not progress)
        for epoch in bar:
            used = torch.zeros(levels, k, dtype=torch.bool)
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), batch_size):
                loss, codes, _ = model(x[order[start:start + batch_size]])
                opt.zero_grad()
                loss.backward()
                opt.step()
                used.scatter_(1, codes.T, True)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if epoch < epochs - 1:
                _reseed_dead(model, x[order[:batch_size]], used, gen)
        model.eval()
        with torch.no_grad():
            _, codes, _, last = model.quantise(model.encoder(x))
    return Quantized(codes.numpy().astype(np.int64), [codebook_size] * levels, last.numpy(),
                     model.codebooks[-1].detach().numpy().copy())


@torch.no_grad()
def _reseed_dead(model: RQVAE, x: torch.Tensor, used: torch.Tensor, gen: torch.Generator) -> None:
    """Move codes unused for a whole epoch onto random residuals of a batch at their level."""
    residual = model.encoder(x)
    for level, book in enumerate(model.codebooks):
        dead = (~used[level]).nonzero().flatten()
        if len(dead):
            book[dead] = residual[torch.randint(len(residual), (len(dead),), generator=gen)]
        residual = residual - book[torch.cdist(residual, book).argmin(1)]
