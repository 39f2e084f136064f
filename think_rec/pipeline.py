"""End-to-end runs shared by the quickstart and ``think-rec bench rec``:
prepare -> semantic IDs -> tiny preset -> stage-1 alignment. Every step skips work already on disk."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from think_rec.data.prepare import prepare
from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out
from think_rec.itemic.build import build_and_save
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.tiny import build_tiny
from think_rec.prompts import load_templates


@dataclass
class RunDirs:
    """The folders of one run under ``root``."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sids(self) -> Path:
        return self.root / "sids"

    @property
    def tiny(self) -> Path:
        return self.root / "tiny-model"

    @property
    def align(self) -> Path:
        return self.root / "align"


def ensure_data(dirs: RunDirs, source: str, path: str | None, **options) -> RecDataset:
    if not (dirs.data / "stats.json").exists():
        prepare(source, path, dirs.data, overwrite=True, **options)  # an unfinished folder is redone
    return RecDataset.load(dirs.data)


# ``build_sids`` option -> the codebook meta key that records it
BUILT_WITH = {"encoder": "encoder", "method": "method", "levels": "quant_levels", "codebook_size": "codebook_size",
              "seed": "seed", "collision": "collision_strategy"}


def ensure_sids(dirs: RunDirs, dataset: RecDataset, **options) -> SIDCodebook:
    """The SIDs in ``dirs.sids``, built once; a folder built with other ``options`` is an error, never reused."""
    if not (dirs.sids / "sid_meta.json").exists():
        train = leave_one_out(dataset.interactions).train["item_ids"]
        build_and_save(dataset, dirs.sids, train_sequences=train, **options)
    book = SIDCodebook.load(dirs.sids)
    stale = {k: (book.meta.get(BUILT_WITH[k]), v) for k, v in options.items()
             if k in BUILT_WITH and book.meta.get(BUILT_WITH[k]) != v}
    if stale:
        raise ValueError(f"{dirs.sids}: SIDs built with other options (built, asked): {stale}; remove it to rebuild")
    return book


def tokenizer_corpus(dataset: RecDataset) -> list[str]:
    """Catalog text plus every prompt template: what the offline tokenizer is trained on."""
    def strings(node: Any) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return []
    return dataset.catalog.texts() + strings(load_templates())


def ensure_tiny(dirs: RunDirs, dataset: RecDataset, seed: int = 0, **options) -> Path:
    if not (dirs.tiny / "config.json").exists():
        build_tiny(dirs.tiny, tokenizer_corpus(dataset), seed=seed, **options)
    return dirs.tiny
