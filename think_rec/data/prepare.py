"""``prepare``: load a source (or generate one), filter it and save it with ``stats.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import atomic_folder, check_target
from .filters import kcore as kcore_filter
from .loaders import load_source
from .synthetic import generate_catalog


def prepare(source: str, path: str | None, out_dir: str | Path, *, kcore: int = 0,
            skip_bad_rows: bool = False, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Write ``out_dir/{catalog,interactions,stats.json}`` (and ``images/``) and return the stats.

    ``source="synthetic"`` takes no ``path``; ``options`` go to ``generate_catalog`` (``n_items``,
    ``n_users``, ``seed``, ...) with images under ``out_dir/images``. Other sources need ``path``
    and pass ``options`` to their loader. The folder appears complete or not at all; an existing
    one is replaced only with ``overwrite``, and never by a dataset left with no users.
    """
    if source != "synthetic" and path is None:
        raise ValueError(f"source {source!r} needs a path")
    if source == "synthetic" and path is not None:
        raise ValueError("source 'synthetic' takes no path")
    check_target(Path(out_dir), overwrite)  # before any loading
    if source != "synthetic":
        ds = load_source(source, path, skip_bad_rows=skip_bad_rows, **options)
        ds = kcore_filter(ds, kcore) if kcore else ds
    with atomic_folder(out_dir, overwrite) as tmp:
        if source == "synthetic":
            options.setdefault("image_dir", tmp / "images")
            ds = generate_catalog(options.pop("n_items", 500), options.pop("n_users", 1000), **options)
            ds = kcore_filter(ds, kcore) if kcore else ds
        return ds.write(tmp)
