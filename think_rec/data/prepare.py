"""``prepare``: load a source (or generate one), filter it and save it with ``stats.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .filters import kcore as kcore_filter
from .loaders import load_source
from .synthetic import generate_catalog


def prepare(source: str, path: str | None, out_dir: str | Path, *, kcore: int = 0,
            skip_bad_rows: bool = False, **options: Any) -> dict[str, Any]:
    """Write ``out_dir/{catalog,interactions,stats.json}`` and return the stats.

    ``source="synthetic"`` takes no ``path``; ``options`` go to ``generate_catalog`` (``n_items``,
    ``n_users``, ``seed``, ...) with images under ``out_dir/images``. Other sources need ``path``
    and pass ``options`` to their loader.
    """
    out = Path(out_dir)
    if source == "synthetic":
        if path is not None:
            raise ValueError("source 'synthetic' takes no path")
        options.setdefault("image_dir", out / "images")
        ds = generate_catalog(options.pop("n_items", 500), options.pop("n_users", 1000), **options)
    else:
        if path is None:
            raise ValueError(f"source {source!r} needs a path")
        ds = load_source(source, path, skip_bad_rows=skip_bad_rows, **options)
    if kcore:
        ds = kcore_filter(ds, kcore)
    return ds.save(out)
