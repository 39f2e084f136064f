"""Chat sessions persisted in SQLite, so a restarted server continues them.

Ids are issued by the server (``secrets.token_urlsafe``): a client can only continue a session it was
given. Beyond ``max_sessions`` the least recently used are dropped, and sessions idle for ``ttl_s``
expire. ``get``/``put`` are blocking: the API calls them in a worker thread.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from think_rec.steering import Constraints

from .conversation import Session

PRUNE_EVERY = 100  # writes between expiry/size sweeps


def new_session_id() -> str:
    return secrets.token_urlsafe(24)


def _dump(s: Session) -> str:
    d = dataclasses.asdict(s)
    d["constraints"] = s.constraints.as_dict()
    return json.dumps(d)


def _load(text: str) -> Session:
    d = json.loads(text)
    c = d.pop("constraints")
    return Session(**d, constraints=Constraints(
        set(c["exclude_brands"]), set(c["exclude_categories"]), set(c["include_brands"]),
        set(c["include_categories"]), c["max_price"]))


class SessionStore:
    """``path``: the SQLite file (``":memory:"`` for none on disk)."""

    def __init__(self, path: Path | str = ":memory:", max_sessions: int = 10_000, ttl_s: float = 7 * 86400):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_sessions, self.ttl_s = path, max_sessions, ttl_s
        self.db = sqlite3.connect(str(path), check_same_thread=False, timeout=10)
        self.lock = threading.Lock()
        self._writes = 0
        with self.lock, self.db:
            if str(path) != ":memory:":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, updated REAL NOT NULL,"
                            " body TEXT NOT NULL)")
            self.db.execute("CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated)")
            self._prune()

    def get(self, session_id: str) -> Session | None:
        """The stored session, or None when unknown or expired."""
        with self.lock:
            row = self.db.execute("SELECT body FROM sessions WHERE id = ? AND updated >= ?",
                                  (session_id, time.time() - self.ttl_s)).fetchone()
        return _load(row[0]) if row else None

    def put(self, session: Session) -> None:
        with self.lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
                            (session.id, time.time(), _dump(session)))
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                self._prune()

    def _prune(self) -> None:
        self.db.execute("DELETE FROM sessions WHERE updated < ?", (time.time() - self.ttl_s,))
        self.db.execute("DELETE FROM sessions WHERE id NOT IN (SELECT id FROM sessions ORDER BY updated DESC "
                        "LIMIT ?)", (self.max_sessions,))

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]

    def close(self) -> None:
        self.db.close()
