"""Amazon 2018 in the MiniOneRec layout: ``index.X.item.json`` plus ``valid.X.csv`` / ``test.X.csv``.

Each CSV row is a window (``history_item_id`` = up to 10 prior items, ``item_id`` = the next one).
A user's sequence is the first window's history, then every window's target in file order (valid
before test); each window's history must be a suffix of the sequence so far, otherwise the row is
bad. The catalog is every item of the item file, used or not.
"""
from __future__ import annotations

import ast
import csv
from pathlib import Path

from ..errors import DataError
from ..schema import RecDataset
from .common import Builder, find_one


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
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"user_id", "history_item_id", "item_id"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(str(csv_path), 1, None, f"missing columns {sorted(missing)}")
            for row in reader:
                try:
                    user, history, target = parse_window(row, csv_path, reader.line_num, b.items)
                    seq = sequences.get(user)
                    if seq is not None and (len(history) > len(seq) or seq[len(seq) - len(history):] != history):
                        raise DataError(str(csv_path), reader.line_num, "history_item_id",
                                        f"window contradicts user {user!r}'s sequence so far "
                                        f"(history is not its suffix)")
                except DataError as e:
                    b.errors.report(e)
                    continue
                if seq is None:
                    sequences[user] = history + [target]
                    first_line[user] = (csv_path, reader.line_num)
                else:
                    seq.append(target)
    for user, seq in sequences.items():
        b.add_user(user, seq, None, *first_line[user])
    return b.build()


def parse_window(row: dict[str, str], path: Path, line: int, items: dict) -> tuple[str, list[str], str]:
    """``(user, history, target)`` of one CSV row, every id checked against the catalog."""
    try:
        history = [str(i) for i in ast.literal_eval(row["history_item_id"] or "[]")]
    except (ValueError, SyntaxError, TypeError):
        raise DataError(str(path), line, "history_item_id", "expected a list of item ids") from None
    target = (row["item_id"] or "").strip()
    for field_name, item_id in [("history_item_id", i) for i in history] + [("item_id", target)]:
        if item_id not in items:
            raise DataError(str(path), line, field_name, f"unknown item id {item_id!r}")
    if not row["user_id"]:
        raise DataError(str(path), line, "user_id", "missing user id")
    return row["user_id"].strip(), history, target
