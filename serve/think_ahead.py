"""Think-Ahead (OneRec-Think §4.4): think and decode the first L-1 SID levels offline, the last one online.

Offline (``build_store``, CLI ``think-rec think-ahead``): per user, the prompt of their history alone (no
dialogue, no constraints) gets ``T`` rationales (``T=0``: no ``<think>`` block, for stage-1 models) and,
after each, a beam over the first L-1 SID levels (``<|sid_begin|>`` + L-1 codes, scores = sums of
log-probabilities renormalised over the trie children, as in ``VLLMEngine``). Rows go to a SQLite file,
keyed by user and looked up by the (``max_history``-truncated) history; a rerun skips stored users.

Online (``ThinkAheadEngine``, ``think-rec serve --backend think_ahead --think-ahead FILE``): a request
whose history has a stored state and whose ``think`` flag matches the store is answered by ONE batched
step: the live prompt (dialogue and constraints included) + the stored rationale + each stored prefix,
constrained to that prefix's children minus ``banned`` items. Item score = prefix score + last-level
log-probability; several rationales are merged by mean probability (``merge_scores``). Anything else
(unknown history, think mismatch, fewer than ``k`` allowed items under the stored prefixes, any store
error such as a malformed row) falls back to full online decoding by the wrapped ``vllm`` or ``hf``
engine. The server opens the store read-only and looks it up in a worker thread; its ``model`` and
``max_history`` must be the server's (checked at start-up).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Sequence

import torch

from think_rec.decoding.think import THINK_CLOSE, THINK_OPEN, merge_scores
from think_rec.decoding.trie import SIDTrie
from think_rec.itemic.codebook import SIDCodebook

from .engine import EngineBusy, EngineConfig, Recommendation, build_engine

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
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

    META_KEYS = ("format_version", "model", "sids_sha", "levels", "rationales", "beam", "max_history",
                 "history", "max_think_tokens")

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
        missing = [k for k in self.META_KEYS if k not in self.meta]
        if missing:
            self.db.close()
            raise ValueError(f"{self.path}: meta table lacks {missing} (not a think-ahead store)")
        if self.meta["format_version"] != FORMAT_VERSION:
            self.db.close()
            raise ValueError(f"{self.path}: format_version {self.meta['format_version']}, expected {FORMAT_VERSION}")

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


# --- scoring on transformers (the offline job, and online when the wrapped engine is "hf") ---

@torch.no_grad()
def child_logprobs(model, rows: Sequence[list[int]], allowed: Sequence[torch.Tensor],
                   batch_size: int = 32) -> list[list[tuple[int, float]]]:
    """Per row, ``(token, logprob)`` of each allowed next token, renormalised over them.

    Rows of equal length run in batches (no padding); a row with one allowed token needs no forward."""
    out: list[list[tuple[int, float]]] = [[(int(t), 0.0) for t in a] if len(a) <= 1 else [] for a in allowed]
    todo = [i for i, a in enumerate(allowed) if len(a) > 1]
    by_len: dict[int, list[int]] = {}
    for i in todo:
        by_len.setdefault(len(rows[i]), []).append(i)
    device = next(model.parameters()).device
    for group in by_len.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            ids = torch.tensor([rows[i] for i in chunk], dtype=torch.long, device=device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits[:, -1]
            for i, row_logits in zip(chunk, logits.float()):
                lp = torch.log_softmax(row_logits[allowed[i].to(device)], -1)
                out[i] = list(zip(allowed[i].tolist(), lp.tolist()))
    return out


def prefix_beam(model, ids: list[int], trie: SIDTrie, depth: int, beam: int) -> list[Prefix]:
    """The top ``beam`` trie prefixes ``<|sid_begin|> c1..c_depth`` after ``ids`` (beam search), best first."""
    beams: list[Prefix] = [([trie.first_token], 0.0)]
    for _ in range(depth):
        steps = child_logprobs(model, [ids + p for p, _ in beams], [trie.allowed(p) for p, _ in beams])
        candidates = [(p + [t], s + lp) for (p, s), children in zip(beams, steps) for t, lp in children]
        beams = sorted(candidates, key=lambda c: -c[1])[:beam]
    return beams


def build_store(model: Path, data: Path, sids: Path, out: Path, *, rationales: int = 0, beam: int = 10,
                max_think_tokens: int = 64, history: str = "full", max_history: int = 20,
                users: Sequence[str] | None = None, seed: int = 0, progress: bool = True) -> int:
    """Precompute ``UserState``s into ``out`` (see the module docstring); returns how many were added.

    ``beam``: prefixes kept per rationale (default 10, the API's default ``k``, as online beam search).

    ``history="full"``: each user's whole sequence (what ``user=`` requests are served with);
    ``"test"``: the leave-one-out test history (all but the last item), for evaluation."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from think_rec.data.schema import RecDataset
    from think_rec.decoding.think import generate_rationales
    from think_rec.model.loading import load_model

    from .conversation import Conversation, Session

    if rationales < 0 or beam < 1 or max_history < 1:
        raise ValueError(f"need rationales >= 0, beam >= 1, max_history >= 1 (got {rationales}, {beam}, "
                         f"{max_history})")
    if history not in ("full", "test"):
        raise ValueError(f"history must be 'full' or 'test', not {history!r}")
    dataset, codebook = RecDataset.load(data), SIDCodebook.load(sids)
    tok = AutoTokenizer.from_pretrained(str(model))
    trie = SIDTrie.from_codebook(codebook, tok)
    levels = trie.levels
    store = ThinkAheadStore(out, {"format_version": FORMAT_VERSION, "model": str(Path(model).resolve()),
                                  "sids_sha": codebook_fingerprint(sids), "levels": levels,
                                  "rationales": rationales, "beam": beam, "max_history": max_history,
                                  "history": history, "max_think_tokens": max_think_tokens})
    try:
        histories = dict(zip(dataset.interactions.users, dataset.interactions.sequences))
        wanted = list(histories) if users is None else list(users)
        unknown = [u for u in wanted if u not in histories]
        if unknown:
            raise ValueError(f"users not in {data}: {unknown[:5]}")
        done = store.users()
        todo = [u for u in wanted if u not in done]
        if not todo:
            return 0
        net, processor = load_model(str(model))
        net.eval()
        conversation = Conversation(dataset, codebook, tok, max_history)
        open_id, close_id = tok.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
        torch.manual_seed(seed)
        for user in tqdm(todo, desc="think-ahead", unit="user", disable=not progress):
            seq = histories[user] if history == "full" else histories[user][:-1]
            hist = seq[-max_history:]
            prompt = conversation.prompt(Session(user, history=hist))
            if rationales:
                rows = generate_rationales(net, processor, [prompt], trie, citable=[hist], num_rationales=rationales,
                                           do_sample=rationales > 1, max_think_tokens=max_think_tokens)[0]
            else:
                rows = [tok.encode(prompt, add_special_tokens=False)]
            thoughts = []
            for ids in rows:
                body = ids[len(ids) - ids[::-1].index(open_id):-1] if rationales else []
                text = tok.decode(body, skip_special_tokens=False).strip() if body else ""
                thoughts.append(Thought(text, body, prefix_beam(net, ids, trie, levels - 1, beam)))
            store.put(UserState(user, hist, thoughts))
            store.commit()  # one row a commit: an interrupted build resumes where it stopped
        return len(todo)
    finally:
        store.close()


class ThinkAheadEngine:
    """Last-level online decoding over stored prefixes, wrapping a ``vllm`` or ``hf`` engine for fallbacks.

    The interface is ``serve.engine.RecEngine``; ``stats`` counts requests served each way."""

    name = "think_ahead"

    def __init__(self, config: EngineConfig):
        from transformers import AutoTokenizer

        if config.think_ahead is None:
            raise ValueError("the think_ahead backend needs a store: --think-ahead FILE (think-rec think-ahead)")
        if config.think_ahead_base not in ("vllm", "hf"):
            raise ValueError(f"think_ahead_base must be 'vllm' or 'hf', not {config.think_ahead_base!r}")
        self.config = config
        self.store = ThinkAheadStore(config.think_ahead)
        if self.store.meta["sids_sha"] != codebook_fingerprint(config.sids):
            raise ValueError(f"{config.think_ahead}: built for another SID codebook than {config.sids} (sids_sha)")
        for key, ours in (("model", str(Path(config.model).resolve())), ("max_history", config.max_history)):
            if self.store.meta[key] != ours:
                raise ValueError(f"{config.think_ahead}: built with {key}={self.store.meta[key]!r}, but the server "
                                 f"has {ours!r}")
        if self.store.meta["history"] != "full":
            log.warning("%s holds %s histories (for evaluation): dataset users are served by the live engine",
                        config.think_ahead, self.store.meta["history"])
        self.base = build_engine(config.think_ahead_base, config)
        self.tok = AutoTokenizer.from_pretrained(str(config.model))
        self.trie = SIDTrie.from_codebook(SIDCodebook.load(config.sids), self.tok)
        if self.store.meta["levels"] != self.trie.levels:
            raise ValueError(f"{config.think_ahead}: levels={self.store.meta['levels']} does not match {config.sids}")
        self.open_id, self.close_id = self.tok.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
        self.end_id = next(iter(self.trie.item_of))[-1]
        self.stats = {"think_ahead_hits": 0, "think_ahead_fallbacks": 0}

    async def start(self) -> None:
        await self.base.start()

    def healthy(self) -> bool:
        return self.base.healthy()

    def shutdown(self) -> None:
        self.base.shutdown()
        self.store.close()

    def _available(self, thoughts: list[Thought], counts) -> int:
        """How many non-banned items lie under the stored prefixes (all thoughts together)."""
        nodes = {self.trie.node_of.get(tuple(p)) for t in thoughts for p, _ in t.prefixes}
        return sum(self.trie.count[n] - counts.get(n, 0) for n in nodes if n is not None)

    async def _last_level(self, rows: list[tuple[list[int], list[int]]], allowed: list[torch.Tensor],
                          banned: list[str]) -> list[list[tuple[int, float]]]:
        """``(token, logprob)`` of the allowed last-level codes after each ``(head, prefix)``: one batched
        forward on the ``hf`` engine, concurrent single-token requests (batched by vLLM) on ``vllm``."""
        if self.config.think_ahead_base == "hf":
            return await self.base.exclusive(child_logprobs, self.base.model, [h + p for h, p in rows], allowed)

        async def one(head: list[int], prefix: list[int], ok: torch.Tensor) -> list[tuple[int, float]]:
            if len(ok) <= 1:  # a lone child has renormalised logprob 0: no model call
                return [(int(t), 0.0) for t in ok]
            return await self.base._children(head, prefix, banned)
        return await asyncio.gather(*(one(h, p, a) for (h, p), a in zip(rows, allowed)))

    async def recommend(self, state: UserState, prompt: str, k: int, banned: set[str]) -> list[tuple[str, float]]:
        """Top ``k`` items from the stored prefixes of ``state`` continued by ``prompt`` (see the docstring)."""
        ids = self.tok.encode(prompt, add_special_tokens=False)
        counts = self.trie.banned_counts(banned)
        rows, allowed, owners = [], [], []
        for i, thought in enumerate(state.thoughts):
            head = ids + [self.open_id] + thought.think_ids + [self.close_id] if self.store.think else ids
            for prefix, score in thought.prefixes:
                ok = self.trie.allowed(prefix, counts)
                if len(ok):
                    rows.append((head, prefix))
                    allowed.append(ok)
                    owners.append((i, prefix, score))
        steps = await self._last_level(rows, allowed, sorted(banned))
        ranked: list[list[tuple[str, float]]] = [[] for _ in state.thoughts]
        for (i, prefix, score), children in zip(owners, steps):
            for t, lp in children:
                item = self.trie.item_at(prefix + [t, self.end_id])
                if item is not None and item not in banned:
                    ranked[i].append((item, score + lp))
        return merge_scores([sorted(r, key=lambda x: -x[1])[:k] for r in ranked], k)

    async def stream(self, prompt: str, *, k: int, banned: set[str], think: bool, max_think_tokens: int,
                     history: Sequence[str] = ()) -> AsyncIterator[str | Recommendation]:
        """Stored rationale and last-level items when ``history`` is stored, else the wrapped engine's stream.

        ``max_think_tokens`` only applies to fallbacks (stored rationales were written offline)."""
        items = None
        try:
            state = await asyncio.to_thread(self.store.find, history) if history else None
            if (state is not None and think == self.store.think
                    and self._available(state.thoughts, self.trie.banned_counts(banned)) >= k):
                items = await self.recommend(state, prompt, k, banned)
        except EngineBusy:
            raise
        except Exception:  # a store or stored-row error: the live engine answers instead
            log.exception("think-ahead lookup failed; falling back to %s", self.config.think_ahead_base)
        if items is None:
            self.stats["think_ahead_fallbacks"] += 1
            async for event in self.base.stream(prompt, k=k, banned=banned, think=think,
                                                max_think_tokens=max_think_tokens, history=history):
                yield event
            return
        self.stats["think_ahead_hits"] += 1
        rationale = state.thoughts[0].text if think else ""
        if rationale:
            yield rationale
        yield Recommendation(rationale, items)
