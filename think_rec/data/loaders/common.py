"""What every loader shares: file checks, line-aware JSON reading and a ``Builder`` that validates
rows (duplicate ids, unknown items, empty sequences) before making a ``RecDataset``."""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Iterator

import datasets

from ..errors import DataError, RowErrors
from ..schema import INTERACTION_FEATURES, ITEM_FEATURES, Catalog, Interactions, RecDataset, make_item


def require_file(path: str | Path) -> Path:
    """``path`` as a ``Path``; ``DataError`` when it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(str(p), None, None, "file not found")
    return p


def find_one(folder: Path, pattern: str, what: str) -> Path:
    """The single file in ``folder`` matching ``pattern``."""
    if not folder.is_dir():
        raise DataError(str(folder), None, None, "folder not found")
    hits = sorted(folder.glob(pattern))
    if len(hits) != 1:
        found = ", ".join(h.name for h in hits) or "none"
        raise DataError(str(folder), None, None, f"expected one {what} ({pattern}), found {found}")
    return hits[0]


def parse_record(text: str, path: Path, line: int, literal: bool = False) -> dict[str, Any]:
    """One JSON object (or, with ``literal``, a Python-literal dict) from a line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if not literal:
            raise DataError(str(path), line, None, f"malformed JSON: {e.msg}") from None
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise DataError(str(path), line, None, "malformed JSON / Python literal") from None
    if not isinstance(value, dict):
        raise DataError(str(path), line, None, f"expected an object, got {type(value).__name__}")
    return value


def iter_jsonl(path: Path, errors: RowErrors, literal: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line_number, record)`` for each non-blank line; bad lines go to ``errors``."""
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                yield n, parse_record(text, path, n, literal)
            except DataError as e:
                errors.report(e)


def iter_json_object(path: Path) -> Iterator[tuple[str, Any, int]]:
    """``(key, value, line)`` for each top-level entry of a JSON object file (keys may repeat)."""
    text = require_file(path).read_text(encoding="utf-8")
    decoder, ws = json.JSONDecoder(), " \t\n\r"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    counted = [0, 1]  # position, line number there

    def line_at(i: int) -> int:  # positions only move forward
        counted[1] += text.count("\n", counted[0], i)
        counted[0] = i
        return counted[1]

    def fail(i: int, msg: str) -> DataError:
        return DataError(str(path), line_at(i), None, f"malformed JSON: {msg}")

    i = skip(0)
    if not text.startswith("{", i):
        raise fail(i, "expected a top-level object")
    i = skip(i + 1)
    if text.startswith("}", i):
        return
    while True:
        if not text.startswith('"', i):
            raise fail(i, "expected a key")
        try:
            key, i = json.decoder.scanstring(text, i + 1)
            line = line_at(i)
            i = skip(i)
            if not text.startswith(":", i):
                raise fail(i, "expected ':'")
            value, i = decoder.raw_decode(text, skip(i + 1))
        except json.JSONDecodeError as e:
            raise fail(e.pos, e.msg) from None
        yield key, value, line
        i = skip(i)
        if text.startswith("}", i):
            return
        if not text.startswith(",", i):
            raise fail(i, "expected ',' or '}'")
        i = skip(i + 1)


def to_price(value: Any) -> float | None:
    """A float price from ``12.5``, ``"$12.50"`` or nothing usable (``None``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().lstrip("$").replace(",", ""))
        except ValueError:
            return None
    return None


def to_text(value: Any) -> str:
    """Text from a string, a list of strings, or a string holding a Python-literal list."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    if isinstance(value, (list, tuple)):
        return " ".join(str(v).strip() for v in value if str(v).strip())
    return "" if value is None else str(value)


class Builder:
    """Collects items and user sequences with their source lines, rejecting bad rows.

    ``known_items=False`` means the catalog is built from the ids the sequences use (no metadata).
    """

    def __init__(self, name: str, source: str | Path, skip_bad_rows: bool = False):
        self.name, self.source = name, str(source)
        self.errors = RowErrors(skip_bad_rows)
        self.items: dict[str, dict[str, Any]] = {}
        self.users: dict[str, tuple[list[str], list[int]]] = {}

    def add_item(self, row: dict[str, Any], path: Path, line: int | None) -> None:
        item_id = str(row.get("item_id") or "").strip()
        if not item_id:
            return self.errors.report(DataError(str(path), line, "item_id", "missing item id"))
        if item_id in self.items:
            return self.errors.report(DataError(str(path), line, "item_id", f"duplicate item id {item_id!r}"))
        self.items[item_id] = make_item(**{**row, "item_id": item_id})

    def add_item_file(self, item_file: Path) -> None:
        """Items from a ``{item_id: {title, description, brand, categories}}`` JSON file
        (``description`` may be a list or a Python-literal list, ``categories`` a comma-separated path)."""
        for item_id, meta, line in iter_json_object(item_file):
            if not isinstance(meta, dict):
                self.errors.report(DataError(str(item_file), line, item_id, "expected an object"))
                continue
            categories = meta.get("categories") or []
            if isinstance(categories, str):
                categories = [c.strip() for c in categories.split(",") if c.strip()]
            self.add_item({"item_id": item_id, "title": to_text(meta.get("title")),
                           "description": to_text(meta.get("description")),
                           "brand": to_text(meta.get("brand")), "categories": categories}, item_file, line)

    def add_user(self, user_id: Any, item_ids: list[Any], timestamps: list[int] | None,
                 path: Path, line: int | None, known_items: bool = True) -> None:
        user_id = "" if user_id is None else str(user_id).strip()
        item_ids = [str(i) for i in item_ids]
        if not user_id:
            return self.errors.report(DataError(str(path), line, "user_id", "missing user id"))
        if user_id in self.users:
            return self.errors.report(DataError(str(path), line, "user_id", f"duplicate user id {user_id!r}"))
        if not item_ids:
            return self.errors.report(DataError(str(path), line, "item_ids", f"empty sequence for user {user_id!r}"))
        if timestamps and len(timestamps) != len(item_ids):
            return self.errors.report(DataError(str(path), line, "timestamps",
                                                f"{len(timestamps)} timestamps for {len(item_ids)} items"))
        if known_items:
            unknown = next((i for i in item_ids if i not in self.items), None)
            if unknown is not None:
                return self.errors.report(DataError(str(path), line, "item_ids", f"unknown item id {unknown!r}"))
        self.users[user_id] = (item_ids, list(timestamps or []))

    def build(self, known_items: bool = True, only_used_items: bool = False) -> RecDataset:
        """The dataset; ``known_items=False`` adds text-less items for ids only sequences name,
        ``only_used_items`` keeps just the items some sequence uses (for category-wide metadata)."""
        if not self.users:
            raise DataError(self.source, None, None, "no valid user sequences")
        if not known_items or only_used_items:
            used = dict.fromkeys(i for seq, _ in self.users.values() for i in seq)
            self.items = {i: self.items.get(i) or make_item(i) for i in used}
        items = list(self.items.values())
        catalog = Catalog(datasets.Dataset.from_dict(
            {k: [r[k] for r in items] for k in ITEM_FEATURES}, features=ITEM_FEATURES))
        interactions = Interactions(datasets.Dataset.from_dict(
            {"user_id": list(self.users), "item_ids": [s for s, _ in self.users.values()],
             "timestamps": [t for _, t in self.users.values()]}, features=INTERACTION_FEATURES))
        extra = {"source": self.source}
        if self.errors.skip_bad_rows:
            extra["dropped_rows"] = self.errors.total
            extra["dropped_examples"] = list(self.errors.examples)
        return RecDataset(self.name, catalog, interactions, extra)
