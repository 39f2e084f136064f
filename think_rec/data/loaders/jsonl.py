"""think_rec's own generic format: a folder with two JSON-lines files.

``items.jsonl`` — one item a line; only ``item_id`` is required::

    {"item_id": "42", "title": "Red kettle", "description": "1.7 l, steel", "brand": "Acme",
     "categories": ["Kitchen", "Kettles"], "price": 24.5, "image": "images/42.png"}

``categories`` may also be a ``" > "``-separated string; a relative ``image`` path is resolved
against the folder (URLs are kept as they are).

``interactions.jsonl`` — one user a line, items in time order, ``timestamps`` optional (same
length as ``item_ids`` when given)::

    {"user_id": "u1", "item_ids": ["42", "7", "42"], "timestamps": [1700000000, 1700003600, 1700007200]}

Every sequence item must be in ``items.jsonl``; the catalog is the whole items file.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..schema import RecDataset
from .common import Builder, iter_jsonl, require_file, to_price, to_text


def load(path: str | Path, *, skip_bad_rows: bool = False) -> RecDataset:
    """Load the folder ``path`` holding ``items.jsonl`` and ``interactions.jsonl``."""
    folder = Path(path)
    items_file, inter_file = require_file(folder / "items.jsonl"), require_file(folder / "interactions.jsonl")
    b = Builder(f"jsonl-{folder.name}", folder, skip_bad_rows)
    for line, rec in iter_jsonl(items_file, b.errors):
        categories = rec.get("categories") or []
        if isinstance(categories, str):
            categories = [c.strip() for c in categories.split(">") if c.strip()]
        image = rec.get("image") or None
        if image and "://" not in image and not Path(image).is_absolute():
            image = str(folder / image)
        b.add_item({"item_id": rec.get("item_id"), "title": to_text(rec.get("title")),
                    "description": to_text(rec.get("description")), "brand": to_text(rec.get("brand")),
                    "categories": [str(c) for c in categories], "price": to_price(rec.get("price")),
                    "image": image}, items_file, line)
    for line, rec in iter_jsonl(inter_file, b.errors):
        items, stamps = rec.get("item_ids"), rec.get("timestamps") or []
        if not isinstance(items, list):
            b.errors.report(DataError(str(inter_file), line, "item_ids", "expected a list of item ids"))
            continue
        try:
            stamps = [int(t) for t in stamps]
        except (TypeError, ValueError):
            b.errors.report(DataError(str(inter_file), line, "timestamps", "expected integers"))
            continue
        b.add_user(rec.get("user_id"), items, stamps, inter_file, line)
    return b.build()
