"""What every loader shares: file checks, line-wise decoding, line-aware JSON reading, typed field
conversions and a ``Builder`` that validates rows (duplicate ids, unknown items, empty sequences)
before making a ``RecDataset``."""
from __future__ import annotations

import ast
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import datasets

from ..errors import DataError, FieldError, RowErrors
from ..schema import INTERACTION_FEATURES, ITEM_FEATURES, Catalog, Interactions, RecDataset, make_item

INT64 = (-2**63, 2**63 - 1)
NESTING = "nested too deeply"


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


class Lines:
    """A file's lines, decoded one at a time; a line that is not UTF-8 is yielded with U+FFFD
    replacements and its error (with the file's byte offset) recorded in ``bad[line]``."""

    def __init__(self, path: Path):
        self.path, self.bad = require_file(path), {}

    def __iter__(self) -> Iterator[str]:
        offset = 0
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    self.bad[n] = f"invalid UTF-8 at byte {offset + e.start}"
                    yield raw.decode("utf-8", "replace")
                offset += len(raw)


def iter_lines(path: Path, errors: RowErrors) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for each non-blank line; undecodable lines go to ``errors``."""
    lines = Lines(path)
    for n, text in enumerate(lines, 1):
        if n in lines.bad:
            errors.report(DataError(str(path), n, None, lines.bad[n]))
        elif text.strip():
            yield n, text


def parse_record(text: str, path: Path, line: int, literal: bool = False) -> dict[str, Any]:
    """One JSON object (or, with ``literal``, a Python-literal dict) from a line."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise DataError(str(path), line, None, f"malformed JSON: {NESTING}") from None
    except json.JSONDecodeError as e:
        if not literal:
            raise DataError(str(path), line, None, f"malformed JSON: {e.msg}") from None
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(str(path), line, None, "malformed JSON / Python literal") from None
    if not isinstance(value, dict):
        raise DataError(str(path), line, None, f"expected an object, got {type(value).__name__}")
    return value


def iter_jsonl(path: Path, errors: RowErrors, literal: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line_number, record)`` for each non-blank line; bad lines go to ``errors``."""
    for n, text in iter_lines(path, errors):
        try:
            yield n, parse_record(text, path, n, literal)
        except DataError as e:
            errors.report(e)


def read_text(path: Path) -> str:
    """A whole UTF-8 file; ``DataError`` with the line and byte offset of the first bad byte."""
    raw = require_file(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(str(path), raw.count(b"\n", 0, e.start) + 1, None,
                        f"invalid UTF-8 at byte {e.start}") from None


def iter_json_object(path: Path) -> Iterator[tuple[str, Any, int]]:
    """``(key, value, line)`` for each top-level entry of a JSON object file (keys may repeat)."""
    text = read_text(path)
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
        except RecursionError:
            raise fail(i, NESTING) from None
        yield key, value, line
        i = skip(i)
        if text.startswith("}", i):
            return
        if not text.startswith(",", i):
            raise fail(i, "expected ',' or '}'")
        i = skip(i + 1)


def to_id(value: Any, field_name: str) -> str:
    """An id from a non-empty string or an integer (``0`` included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None or isinstance(value, str):
        raise FieldError(field_name, "missing")
    raise FieldError(field_name, f"expected a string or integer id, got {type(value).__name__}")


def to_ids(value: Any, field_name: str) -> list[str]:
    """A list of ids (``to_id`` each)."""
    if not isinstance(value, list):
        raise FieldError(field_name, f"expected a list of item ids, got {type(value).__name__}")
    return [to_id(v, field_name) for v in value]


def to_timestamp(value: Any, field_name: str = "timestamp") -> int:
    """An int64 timestamp from an integer, an integral float or a string holding one."""
    t: Any = value
    if isinstance(value, str):
        try:
            t = int(value.strip())
        except ValueError:
            try:
                t = float(value)
            except ValueError:
                t = None
    if isinstance(t, float) and math.isfinite(t) and t.is_integer():
        t = int(t)
    if not isinstance(t, int) or isinstance(t, bool):
        raise FieldError(field_name, f"expected an integer, got {value!r:.40}")
    if not INT64[0] <= t <= INT64[1]:
        raise FieldError(field_name, f"{t} is out of the int64 range")
    return t


def to_timestamps(value: Any, field_name: str = "timestamps") -> list[int]:
    """A list of timestamps; ``None`` is an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(field_name, f"expected a list of integers, got {type(value).__name__}")
    return [to_timestamp(v, field_name) for v in value]


def to_float(value: Any, field_name: str) -> float:
    """A finite float from a number or a numeric string."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except (ValueError, OverflowError):
        raise FieldError(field_name, f"expected a number, got {value!r:.40}") from None
    if not math.isfinite(number):
        raise FieldError(field_name, f"expected a finite number, got {value!r:.40}")
    return number


def to_price(value: Any) -> float | None:
    """A finite price from ``12.5`` or ``"$12.50"``; ``None`` when absent or unparsable text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().lstrip("$").replace(",", ""))
        except ValueError:
            return None  # "from $5", "—": no usable price
    return to_float(value, "price")


def _scalar_text(value: Any, field_name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise FieldError(field_name, f"expected text, got {type(value).__name__}")


def to_text(value: Any, field_name: str) -> str:
    """Text from a string, a number, a list of those, or a string holding a Python-literal list."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    if isinstance(value, (list, tuple)):
        parts = (_scalar_text(v, field_name).strip() for v in value)
        return " ".join(p for p in parts if p)
    return "" if value is None else _scalar_text(value, field_name)


def to_categories(value: Any, sep: str | None = None) -> list[str]:
    """A category path from a list of strings (or, with ``sep``, a separated string)."""
    if value is None or value == "":
        return []
    if isinstance(value, str) and sep is not None:
        return [c.strip() for c in value.split(sep) if c.strip()]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        got = type(value).__name__ if not isinstance(value, list) else "a list with non-strings"
        raise FieldError("categories", f"expected a list of strings, got {got}")
    return value


class Builder:
    """Collects items and user sequences with their source lines, rejecting bad rows.

    ``known_items=False`` means the catalog is built from the ids the sequences use (no metadata).
    """

    def __init__(self, name: str, source: str | Path, skip_bad_rows: bool = False):
        self.name, self.source = name, str(source)
        self.errors = RowErrors(skip_bad_rows)
        self.items: dict[str, dict[str, Any]] = {}
        self.users: dict[str, tuple[list[str], list[int]]] = {}

    @contextmanager
    def row(self, path: Path, line: int | None) -> Iterator[None]:
        """Reports whatever goes wrong inside as ``DataError(path, line, field)`` and skips the rest."""
        try:
            yield
        except DataError as e:
            self.errors.report(e)
        except FieldError as e:
            self.errors.report(DataError(str(path), line, e.field, e.message))
        except RecursionError:
            self.errors.report(DataError(str(path), line, None, NESTING))
        except Exception as e:  # noqa: BLE001 - any other surprise in a row still names file and line
            self.errors.report(DataError(str(path), line, None, f"{type(e).__name__}: {e}"))

    def add_item(self, row: dict[str, Any], path: Path, line: int | None) -> None:
        """One item row (its fields already converted); ``item_id`` is checked here."""
        with self.row(path, line):
            item_id = to_id(row.get("item_id"), "item_id")
            if item_id in self.items:
                raise FieldError("item_id", f"duplicate item id {item_id!r}")
            self.items[item_id] = make_item(**{**row, "item_id": item_id})

    def add_item_file(self, item_file: Path) -> None:
        """Items from a ``{item_id: {title, description, brand, categories}}`` JSON file
        (``description`` may be a list or a Python-literal list, ``categories`` a comma-separated path)."""
        for item_id, meta, line in iter_json_object(item_file):
            with self.row(item_file, line):
                if not isinstance(meta, dict):
                    raise FieldError(item_id, "expected an object")
                self.add_item({"item_id": item_id, "title": to_text(meta.get("title"), "title"),
                               "description": to_text(meta.get("description"), "description"),
                               "brand": to_text(meta.get("brand"), "brand"),
                               "categories": to_categories(meta.get("categories"), ",")}, item_file, line)

    def add_user(self, user_id: Any, item_ids: Any, timestamps: list[int] | None,
                 path: Path, line: int | None, known_items: bool = True) -> None:
        with self.row(path, line):
            user_id, item_ids = to_id(user_id, "user_id"), to_ids(item_ids, "item_ids")
            if user_id in self.users:
                raise FieldError("user_id", f"duplicate user id {user_id!r}")
            if not item_ids:
                raise FieldError("item_ids", f"empty sequence for user {user_id!r}")
            if timestamps and len(timestamps) != len(item_ids):
                raise FieldError("timestamps", f"{len(timestamps)} timestamps for {len(item_ids)} items")
            if known_items:
                unknown = next((i for i in item_ids if i not in self.items), None)
                if unknown is not None:
                    raise FieldError("item_ids", f"unknown item id {unknown!r}")
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
            extra["dropped_by_reason"] = dict(sorted(self.errors.dropped.items(), key=lambda kv: -kv[1]))
            extra["dropped_examples"] = list(self.errors.examples)
        return RecDataset(self.name, catalog, interactions, extra)
