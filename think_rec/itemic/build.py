"""Items -> embeddings -> residual quantisation -> unique SIDs (``SIDCodebook``)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..data.schema import RecDataset
from .codebook import SIDCodebook
from .collisions import resolve
from .encoders import DEFAULT_TEXT_MODEL, encode_behaviour, encode_images, encode_text
from .fusion import fuse
from .rq_kmeans import rq_kmeans
from .rq_vae import rq_vae

MODALITIES = ("text", "behaviour", "image")
METHODS = ("rq-kmeans", "rq-vae")


def item_embeddings(dataset: RecDataset, encoder: str = "text", *, text_model: str = DEFAULT_TEXT_MODEL,
                    image_model: str | None = None, weights: dict[str, float] | None = None,
                    train_sequences: list[list[str]] | None = None, seed: int = 0,
                    progress: bool = True, encoded: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """Fused embeddings in catalog order for ``encoder`` (e.g. ``"text+behaviour"``), plus meta.

    Behaviour uses ``train_sequences``; when None, each user's sequence without its last two items
    (the leave-one-out training part), so held-out targets never shape the SIDs. ``encoded`` holds
    modalities already encoded in catalog order (e.g. the text embeddings of an earlier build)."""
    modalities = encoder.split("+")
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or len(set(modalities)) != len(modalities):
        raise ValueError(f"encoder {encoder!r}: use '+'-joined modalities from {MODALITIES}")
    catalog, meta = dataset.catalog, {}
    if "text" in modalities and not catalog.has_text():
        raise ValueError(f"encoder {encoder!r}: catalog of {dataset.name!r} has no item text (title, brand, categories "
                         "and description empty for every item); use encoder 'behaviour'")
    parts = {m: np.asarray(x) for m, x in (encoded or {}).items() if m in modalities}
    if "text" in modalities and "text" not in parts:
        parts["text"] = encode_text(catalog.texts(), text_model, progress=progress)
        meta["text_model"] = text_model
    if "behaviour" in modalities and "behaviour" not in parts:
        if train_sequences is None:
            train_sequences = [s[:-2] for s in dataset.interactions.sequences]
        parts["behaviour"] = encode_behaviour(train_sequences, list(catalog.ids), seed=seed)
    if "image" in modalities and "image" not in parts:
        parts["image"] = encode_images(list(catalog.items["image"]), image_model, progress=progress)
        meta["image_model"] = image_model
    emb = fuse({m: parts[m] for m in modalities}, weights)
    cold = np.linalg.norm(emb, axis=1) == 0
    if cold.any():  # nothing known about these items: random directions spread them over codes
        noise = np.random.default_rng(seed).standard_normal((int(cold.sum()), emb.shape[1]))
        emb[cold] = noise / np.linalg.norm(noise, axis=1, keepdims=True) * np.sqrt(len(parts))
    meta.update(encoder=encoder, weights=weights or {}, embedding_dim=int(emb.shape[1]),
                cold_items=int(cold.sum()))
    return emb.astype(np.float32), meta


def quantise(emb: np.ndarray, ids: list[str], *, method: str = "rq-kmeans", levels: int = 3,
             codebook_size: int = 256, seed: int = 0, collision: str = "extra-level",
             progress: bool = True, **method_kw) -> SIDCodebook:
    """Unique SIDs for the rows of ``emb`` (ids in row order); build stats go into ``meta``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if len(emb) != len(ids):
        raise ValueError(f"{len(emb)} embeddings for {len(ids)} items")
    start = time.perf_counter()
    fn = rq_kmeans if method == "rq-kmeans" else rq_vae
    q = fn(emb, levels=levels, codebook_size=codebook_size, seed=seed, progress=progress, **method_kw)
    codes, sizes, stats = resolve(q, collision)
    meta = {"method": method, "quant_levels": levels, "codebook_size": codebook_size, "seed": seed,
            **stats, "build_seconds": round(time.perf_counter() - start, 3)}
    return SIDCodebook({i: tuple(c) for i, c in zip(ids, codes.tolist())}, sizes, meta)


def build_sids(dataset: RecDataset, *, encoder: str = "text", method: str = "rq-kmeans", levels: int = 3,
               codebook_size: int = 256, seed: int = 0, text_model: str = DEFAULT_TEXT_MODEL,
               image_model: str | None = None, weights: dict[str, float] | None = None,
               train_sequences: list[list[str]] | None = None, collision: str = "extra-level",
               progress: bool = True, return_embeddings: bool = False
               ) -> SIDCodebook | tuple[SIDCodebook, np.ndarray]:
    """Encode every catalog item with ``encoder`` and quantise with ``method`` into unique SIDs
    (with ``return_embeddings``: also the fused item embeddings in catalog order)."""
    start = time.perf_counter()
    emb, meta = item_embeddings(dataset, encoder, text_model=text_model, image_model=image_model,
                                weights=weights, train_sequences=train_sequences, seed=seed,
                                progress=progress)
    encode_seconds = round(time.perf_counter() - start, 3)
    book = quantise(emb, list(dataset.catalog.ids), method=method, levels=levels, codebook_size=codebook_size,
                    seed=seed, collision=collision, progress=progress)
    book.meta.update(meta, encode_seconds=encode_seconds, dataset=dataset.name)
    return (book, emb) if return_embeddings else book


def build_and_save(dataset: RecDataset, out_dir: str | Path, **kw) -> SIDCodebook:
    """``build_sids(dataset, **kw)``, then save the codebook plus ``item_embeddings.npy`` and
    ``item_ids.json`` (the embeddings' row order) into ``out_dir``."""
    book, emb = build_sids(dataset, **kw, return_embeddings=True)
    out = Path(out_dir)
    book.save(out)
    np.save(out / "item_embeddings.npy", emb)
    (out / "item_ids.json").write_text(json.dumps(list(dataset.catalog.ids)))
    return book


def load_embeddings(sid_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """``(embeddings, item_ids)`` written by ``build_and_save``."""
    d = Path(sid_dir)
    if not (d / "item_embeddings.npy").exists():
        raise FileNotFoundError(f"{d}: no item_embeddings.npy; run `think-rec sids build` first")
    return np.load(d / "item_embeddings.npy"), json.loads((d / "item_ids.json").read_text())
