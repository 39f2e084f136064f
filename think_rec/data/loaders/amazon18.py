"""Amazon 2018 in the MiniOneRec layout: ``index.X.item.json`` plus ``valid.X.csv`` / ``test.X.csv``.

Each CSV row is a window (``history_item_id`` = up to 10 prior items, ``item_id`` = the next one).
A user's sequence is the first window's history, then every window's target in file order (valid
before test); each window's history must be a suffix of the sequence so far, otherwise the row is
bad. The catalog is every item of the item file, used or not.
"""
from __future__ import annotations

import ast
import csv
import sys
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..schema import RecDataset
from .common import Builder, Lines, find_one, to_id

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long titles/histories exceed the 131,072 default


def load(path: str | Path, *, skip_bad_rows: bool = False, category: str = "*") -> RecDataset:
    """Load the folder ``path``; ``category`` picks one when the folder holds several."""
    folder = Path(path)
    item_file = find_one(folder, f"index.{category}.item.json", "item file")
    name = item_file.name[len("index."):-len(".item.json")]
    windows = [find_one(folder, f"{split}.{name}*.csv", f"{split} CSV") for split in ("valid", "test")]
    b = Builder(f"amazon18-{name}", folder, skip_bad_rows)
    b.add_item_file(item_file)
    sequences: dict[str, list[str]] = {}
    first_line: dict[str, tuple[Path, int]] = {}
    for csv_path in windows:
        lines = Lines(csv_path)
        reader = csv.DictReader(lines)
        try:
            missing = {"user_id", "history_item_id", "item_id"} - set(reader.fieldnames or ())
        except csv.Error as e:
            raise DataError(str(csv_path), 1, None, f"malformed CSV: {e}") from None
        if missing:
            raise DataError(str(csv_path), 1, None, f"missing columns {sorted(missing)}")
        while True:
            start = reader.line_num
            with b.row(csv_path, start + 1):
                try:
                    row = next(reader, None)
                except csv.Error as e:
                    raise DataError(str(csv_path), reader.line_num, None, f"malformed CSV: {e}") from None
                if row is None:
                    break
                bad = next((n for n in range(start + 1, reader.line_num + 1) if n in lines.bad), None)
                if bad is not None:
                    raise DataError(str(csv_path), bad, None, lines.bad[bad])
                user, history, target = parse_window(row, csv_path, reader.line_num, b.items)
                seq = sequences.get(user)
                if seq is not None and (len(history) > len(seq) or seq[len(seq) - len(history):] != history):
                    raise DataError(str(csv_path), reader.line_num, "history_item_id",
                                    f"window contradicts user {user!r}'s sequence so far "
                                    f"(history is not its suffix)")
                if seq is None:
                    sequences[user] = history + [target]
                    first_line[user] = (csv_path, reader.line_num)
                else:
                    seq.append(target)
    for user, seq in sequences.items():
        b.add_user(user, seq, None, *first_line[user])
    return b.build()


def parse_window(row: dict[str, Any], path: Path, line: int, items: dict) -> tuple[str, list[str], str]:
    """``(user, history, target)`` of one CSV row, every id checked against the catalog."""
    if None in row or any(v is None for v in row.values()):
        raise DataError(str(path), line, None, "wrong number of columns")
    try:
        history = ast.literal_eval(row["history_item_id"] or "[]")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        history = None
    if not isinstance(history, (list, tuple)):
        raise DataError(str(path), line, "history_item_id", "expected a list of item ids")
    history = [to_id(i, "history_item_id") for i in history]
    target = to_id(row["item_id"], "item_id")
    for field_name, item_id in [("history_item_id", i) for i in history] + [("item_id", target)]:
        if item_id not in items:
            raise DataError(str(path), line, field_name, f"unknown item id {item_id!r}")
    return to_id(row["user_id"], "user_id"), history, target
