"""think_rec's own generic format: a folder with two JSON-lines files.

``items.jsonl`` — one item a line; only ``item_id`` is required::

    {"item_id": "42", "title": "Red kettle", "description": "1.7 l, steel", "brand": "Acme",
     "categories": ["Kitchen", "Kettles"], "price": 24.5, "image": "images/42.png"}

``categories`` may also be a ``" > "``-separated string; ``image`` is an http(s) URL or an image file
inside the folder (relative to it); ``data prepare`` copies such files into the prepared folder.

``interactions.jsonl`` — one user a line, items in time order, ``timestamps`` optional (same
length as ``item_ids`` when given)::

    {"user_id": "u1", "item_ids": ["42", "7", "42"], "timestamps": [1700000000, 1700003600, 1700007200]}

Ids are strings or integers. Every sequence item must be in ``items.jsonl``; the catalog is the
whole items file.
"""
from __future__ import annotations

from pathlib import Path

from ..images import source_image
from ..schema import RecDataset
from .common import Builder, iter_jsonl, require_file, to_categories, to_price, to_text, to_timestamps


def load(path: str | Path, *, skip_bad_rows: bool = False) -> RecDataset:
    """Load the folder ``path`` holding ``items.jsonl`` and ``interactions.jsonl``."""
    folder = Path(path).resolve()
    items_file, inter_file = require_file(folder / "items.jsonl"), require_file(folder / "interactions.jsonl")
    b = Builder(f"jsonl-{folder.name}", folder, skip_bad_rows)
    for line, rec in iter_jsonl(items_file, b.errors):
        with b.row(items_file, line):
            b.add_item({"item_id": rec.get("item_id"), "title": to_text(rec.get("title"), "title"),
                        "description": to_text(rec.get("description"), "description"),
                        "brand": to_text(rec.get("brand"), "brand"),
                        "categories": to_categories(rec.get("categories"), ">"),
                        "price": to_price(rec.get("price")), "image": source_image(folder, rec.get("image"))},
                       items_file, line)
    for line, rec in iter_jsonl(inter_file, b.errors):
        with b.row(inter_file, line):
            b.add_user(rec.get("user_id"), rec.get("item_ids"), to_timestamps(rec.get("timestamps")),
                       inter_file, line)
    return b.build()
