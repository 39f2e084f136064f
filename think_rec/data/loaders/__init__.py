"""One loader per source layout; each has ``load(path, *, skip_bad_rows=False, **options) -> RecDataset``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..schema import RecDataset
from . import amazon14, amazon18, amazon23, jsonl, lcrec, recbole
from .recbole import movielens_100k_path

LOADERS: dict[str, Callable[..., RecDataset]] = {
    "amazon18": amazon18.load,
    "amazon14": amazon14.load,
    "amazon23": amazon23.load,
    "lcrec": lcrec.load,
    "recbole": recbole.load,
    "jsonl": jsonl.load,
}


def load_source(source: str, path: str | Path, **kwargs: Any) -> RecDataset:
    """Load ``path`` with the loader named ``source`` (a key of ``LOADERS``)."""
    if source not in LOADERS:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(LOADERS)}")
    return LOADERS[source](path, **kwargs)


__all__ = ["LOADERS", "load_source", "movielens_100k_path"]
