"""Amazon Reviews 2023 (McAuley Lab) jsonl: ``<Category>.jsonl`` + ``meta_<Category>.jsonl``.

Review lines need ``user_id``, ``parent_asin`` and ``timestamp`` (ms); each user's items are sorted by
time (ties keep file order). Metadata lines: ``parent_asin, title, description`` (list), ``features``,
``store, categories, price, images`` (``[{"large": url, ...}]``). Without a meta file items have no
text. The catalog holds the items the reviews use (meta files cover a whole category).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import DataError, FieldError
from ..images import source_image
from ..schema import RecDataset
from .common import (Builder, iter_jsonl, require_file, to_categories, to_float, to_id, to_price, to_text,
                     to_timestamp)


def load(path: str | Path, *, skip_bad_rows: bool = False, meta: str | Path | None = None,
         min_rating: float | None = None) -> RecDataset:
    """Load ``path`` (a reviews file, or a folder with one reviews file and its ``meta_`` file);
    ``min_rating`` keeps only reviews rated at least that."""
    p = Path(path)
    if p.is_dir():
        reviews = [f for f in sorted(p.glob("*.jsonl")) if not f.name.startswith("meta_")]
        if len(reviews) != 1:
            raise DataError(str(p), None, None, f"expected one reviews .jsonl, found {len(reviews)}")
        p = reviews[0]
    reviews_file = require_file(p)
    if meta is None and (p.parent / f"meta_{p.name}").is_file():
        meta = p.parent / f"meta_{p.name}"
    b = Builder(f"amazon23-{p.stem}", reviews_file, skip_bad_rows)
    if meta is not None:
        meta_file = require_file(meta)
        for line, rec in iter_jsonl(meta_file, b.errors):
            with b.row(meta_file, line):
                b.add_item({"item_id": rec.get("parent_asin"), "title": to_text(rec.get("title"), "title"),
                            "description": to_text(rec.get("description"), "description")
                            or to_text(rec.get("features"), "features"),
                            "brand": to_text(rec.get("store"), "store"),
                            "categories": to_categories(rec.get("categories")), "price": to_price(rec.get("price")),
                            "image": first_image(rec.get("images"), meta_file.parent.resolve())}, meta_file, line)
    events: dict[str, list[tuple[int, str]]] = defaultdict(list)
    first_line: dict[str, int] = {}
    for line, rec in iter_jsonl(reviews_file, b.errors):
        with b.row(reviews_file, line):
            user, item = to_id(rec.get("user_id"), "user_id"), to_id(rec.get("parent_asin"), "parent_asin")
            if meta is not None and item not in b.items:
                raise FieldError("parent_asin", f"unknown item id {item!r}")
            ts = to_timestamp(rec.get("timestamp"))
            if min_rating is not None and to_float(rec.get("rating") or 0, "rating") < min_rating:
                continue
            events[user].append((ts, item))
            first_line.setdefault(user, line)
    for user, evs in events.items():
        evs.sort(key=lambda e: e[0])
        b.add_user(user, [i for _, i in evs], [t for t, _ in evs], reviews_file, first_line[user],
                   known_items=meta is not None)
    return b.build(known_items=meta is not None, only_used_items=True)


def first_image(images: Any, root: Path) -> str | None:
    """The first ``large`` (or ``hi_res``, ``thumb``) image of a metadata ``images`` list."""
    if images is None:
        return None
    if not isinstance(images, list):
        raise FieldError("images", f"expected a list, got {type(images).__name__}")
    found = (im.get("large") or im.get("hi_res") or im.get("thumb") for im in images if isinstance(im, dict))
    return source_image(root, next(found, None))
