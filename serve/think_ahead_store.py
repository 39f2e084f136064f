"""The Think-Ahead store (``serve.think_ahead``): one SQLite file of precomputed ``UserState``s.

Format 2: prefix scores are sums of code log-probabilities over the SID tokens (``decoding.trie_beam``), as
every engine scores; format 1 files (normalised over the trie children) must be rebuilt. Format 3: the prefix
search banned the history items when the model's ``served.json`` excludes them (meta ``exclude_history``), as the
live engines prune them; format 2 files kept prefixes holding only history items. Format 4: meta
``model_fingerprint`` (the model's weights, not only its path: a model retrained in place makes its store stale).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

FORMAT_VERSION = 4
Prefix = tuple[list[int], float]


@dataclass
class Thought:
    """One stored rationale (empty when the store does not think) and its SID-prefix beam, best first."""

    text: str
    think_ids: list[int]  # the rationale's token ids between <think> and </think>
    prefixes: list[Prefix]  # <|sid_begin|> + the first L-1 codes, with their scores


@dataclass
class UserState:
    """What Think-Ahead precomputed for one user."""

    user_id: str
    history: list[str]
    thoughts: list[Thought]


def codebook_fingerprint(sids: Path) -> str:
    """A hash of the SID assignment (``sids.json``): stored prefixes are only valid for that codebook."""
    path = Path(sids) / "sids.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (a folder written by `think-rec sids build`)")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class ThinkAheadStore:
    """The SQLite file: a ``meta`` table (build settings) and a ``users`` table (one ``UserState`` a row)."""

    META_KEYS = ("format_version", "model", "model_fingerprint", "sids_sha", "levels", "rationales", "beam",
                 "max_history", "history", "max_think_tokens", "exclude_history")

    def __init__(self, path: Path | str, meta: dict | None = None):
        """Open ``path`` read-only; with ``meta`` open it for writing (WAL), create it if missing, and check it
        was built with the same settings."""
        self.path = Path(path)
        if meta is None and not self.path.exists():
            raise FileNotFoundError(f"think-ahead store {self.path} not found (build it: think-rec think-ahead)")
        self.lock = threading.Lock()  # one query at a time on the shared connection
        if meta is None:
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            if meta is not None:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self.db.execute("CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, history TEXT NOT NULL,"
                                " thoughts TEXT NOT NULL)")
                self.db.execute("CREATE INDEX IF NOT EXISTS users_history ON users (history)")
                stored = self._meta()
                for key, value in meta.items():
                    if key in stored and stored[key] != value:
                        raise ValueError(f"{self.path}: built with {key}={stored[key]!r}, not {value!r}; "
                                         "use another --out or the same settings")
                self.db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                                    [(k, json.dumps(v)) for k, v in meta.items()])
                self.db.commit()
            self.meta = self._meta()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise ValueError(f"{self.path} is not a think-ahead store: {e}") from e
        if "format_version" in self.meta and self.meta["format_version"] != FORMAT_VERSION:
            self.db.close()
            raise ValueError(f"{self.path}: format_version {self.meta['format_version']}, expected {FORMAT_VERSION}"
                             " (rebuild it: think-rec think-ahead)")
        missing = [k for k in self.META_KEYS if k not in self.meta]
        if missing:
            self.db.close()
            raise ValueError(f"{self.path}: meta table lacks {missing} (not a think-ahead store)")

    def _meta(self) -> dict:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    @property
    def think(self) -> bool:
        return self.meta["rationales"] > 0

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def users(self) -> set[str]:
        return {u for (u,) in self.db.execute("SELECT user_id FROM users")}

    def put(self, state: UserState) -> None:
        thoughts = [{"text": t.text, "think_ids": t.think_ids, "prefixes": [[p, s] for p, s in t.prefixes]}
                    for t in state.thoughts]
        self.db.execute("INSERT OR REPLACE INTO users VALUES (?, ?, ?)",
                        (state.user_id, json.dumps(list(state.history)), json.dumps(thoughts)))

    def commit(self) -> None:
        self.db.commit()

    def _state(self, row: tuple[str, str, str]) -> UserState:
        user, history, thoughts = row
        try:
            return UserState(user, json.loads(history), [
                Thought(t["text"], t["think_ids"], [(list(p), float(s)) for p, s in t["prefixes"]])
                for t in json.loads(thoughts)])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.path}: user {user!r} has a malformed 'thoughts' field: {e}") from e

    def get(self, user_id: str) -> UserState | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return self._state(row) if row else None

    def find(self, history: Sequence[str]) -> UserState | None:
        """The state stored for exactly this (truncated) history, if any."""
        with self.lock:
            row = self.db.execute("SELECT * FROM users WHERE history = ? LIMIT 1",
                                  (json.dumps(list(history)),)).fetchone()
        return self._state(row) if row else None

    def close(self) -> None:
        self.db.close()
