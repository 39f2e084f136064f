"""Amazon 2014 in the P5 / TIGER layout: ``sequential_data.txt`` (``user item item ...`` per line, in
time order) with optional metadata.

- ``meta``: an Amazon 2014 ``meta_*.json`` file, one item a line, strict JSON or a Python literal
  (fields ``asin, title, description, brand, categories, price, imUrl``; a local ``imUrl``
  must be an image file beside the metadata). Found next to the sequence
  file when ``path`` is a folder holding exactly one ``meta_*.json``.
- ``datamaps``: P5's ``datamaps.json`` (``id2item``: sequence id -> asin). Without it, sequence ids
  are looked up in the metadata as they are.

Without metadata items have no text. The catalog holds the items the sequences use (metadata files
cover a whole category).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError, FieldError
from ..images import source_image
from ..schema import RecDataset
from .common import (NESTING, Builder, iter_jsonl, iter_lines, read_text, require_file, to_categories, to_id,
                     to_price, to_text)


def load(path: str | Path, *, skip_bad_rows: bool = False, meta: str | Path | None = None,
         datamaps: str | Path | None = None) -> RecDataset:
    """Load ``path`` (the sequence file, or a folder holding ``sequential_data.txt``)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    seq_file = require_file(p / "sequential_data.txt" if p.is_dir() else p)
    if meta is None and p.is_dir():
        found = sorted(folder.glob("meta_*.json"))
        meta = found[0] if len(found) == 1 else None
    if datamaps is None and (folder / "datamaps.json").is_file() and meta is not None:
        datamaps = folder / "datamaps.json"
    b = Builder(f"amazon14-{folder.name}", seq_file, skip_bad_rows)
    to_item = load_datamaps(require_file(datamaps)) if datamaps else {}
    if meta is not None:
        meta_file = require_file(meta)
        wanted = set(to_item.values()) if to_item else None
        by_asin = {v: k for k, v in to_item.items()}
        for line, rec in iter_jsonl(meta_file, b.errors, literal=True):
            with b.row(meta_file, line):
                asin = to_id(rec.get("asin"), "asin")
                if wanted is not None and asin not in wanted:
                    continue
                b.add_item({"item_id": by_asin.get(asin, asin), "title": to_text(rec.get("title"), "title"),
                            "description": to_text(rec.get("description"), "description"),
                            "brand": to_text(rec.get("brand"), "brand"),
                            "categories": categories_2014(rec.get("categories")),
                            "price": to_price(rec.get("price")),
                            "image": source_image(meta_file.parent.resolve(), rec.get("imUrl"))}, meta_file, line)
    for n, text in iter_lines(seq_file, b.errors):
        user, *items = text.split()
        b.add_user(user, items, None, seq_file, n, known_items=meta is not None)
    return b.build(known_items=meta is not None, only_used_items=True)


def categories_2014(value: Any) -> list[str]:
    """Amazon 2014 ``categories``: a list of category paths (the first is kept), a path or a name."""
    if isinstance(value, dict):
        raise FieldError("categories", "expected a list of category paths, got an object")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and isinstance(value[0], list):
        value = value[0]
    return to_categories(value)


def load_datamaps(path: Path) -> dict[str, str]:
    """P5 ``datamaps.json`` -> ``{sequence item id: asin}``."""
    try:
        maps = json.loads(read_text(path))
        return {str(k): to_id(v, "id2item") for k, v in maps["id2item"].items()}
    except json.JSONDecodeError as e:
        raise DataError(str(path), e.lineno, None, f"malformed JSON: {e.msg}") from None
    except RecursionError:
        raise DataError(str(path), None, None, f"malformed JSON: {NESTING}") from None
    except (KeyError, AttributeError, TypeError, FieldError):
        raise DataError(str(path), None, "id2item", "expected {'id2item': {id: asin}}") from None
