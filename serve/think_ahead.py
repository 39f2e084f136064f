"""Think-Ahead (OneRec-Think §4.4): think and decode the first L-1 SID levels offline, the last one online.

Offline (``think_ahead_build.build_store``, CLI ``think-rec think-ahead``): per user, the prompt of their history
alone (no dialogue, no constraints) gets ``T`` rationales (``T=0``: no ``<think>`` block, for stage-1 models)
and, after each, a beam over the first L-1 SID levels (``<|sid_begin|>`` + L-1 codes, ``decoding.search``
scores). Rows go to a SQLite file (``think_ahead_store``), keyed by user and looked up by the
(``max_history``-truncated) history; a rerun skips stored users.

Online (``ThinkAheadEngine``, ``think-rec serve --backend think_ahead --think-ahead FILE``): a request
whose history has a stored state and whose ``think`` flag matches the store is answered by ONE beam step
(``trie_beam.expand``) of the wrapped engine's ``child_logprobs``: the live prompt (dialogue and constraints
included) + the stored rationale + each stored prefix, constrained to that prefix's children minus ``banned``
items. Item score = prefix score + last-level log-probability, as full decoding scores it; the served ranking
then fuses these beams with the model's collaborative prior and, for a model with item tokens, its item head
(``decoding.ranking.fuse_steps``, the extra items scored through the same ``child_logprobs``, the item head by the
wrapped engine's ``item_logprobs`` on the live prompt); several rationales are merged by mean probability
(``merge_scores``). A store built with the served beam width (``served.json``) gives the live engine's items.
Anything else (unknown history, think
mismatch, fewer than ``k`` allowed items under the stored prefixes, any store error such as a malformed row)
falls back to full online decoding by the wrapped ``vllm`` or ``hf`` engine. The server opens the store
read-only and looks it up in a worker thread; its ``model`` and ``max_history`` must be the server's
(checked at start-up).
"""
from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

from think_rec.decoding.ranking import fuse_steps
from think_rec.decoding.think import THINK_CLOSE, THINK_OPEN, merge_scores
from think_rec.decoding.trie import SIDTrie
from think_rec.decoding.trie_beam import expand, ranked_items
from think_rec.finetune.run_state import model_fingerprint
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.artefacts import ServedConfig, load_prior

from .engine import EngineBusy, EngineConfig, Recommendation, StepEngine
from .think_ahead_build import build_store
from .think_ahead_store import Thought, ThinkAheadStore, UserState, codebook_fingerprint

__all__ = ["ThinkAheadEngine", "ThinkAheadStore", "Thought", "UserState", "build_store"]
log = logging.getLogger(__name__)


class ThinkAheadEngine:
    """Last-level online decoding over stored prefixes, wrapping a ``vllm`` or ``hf`` engine (made by
    ``build_base``, i.e. ``serve.engines.build_engine``) for the last level and for fallbacks.

    The interface is ``serve.engine.RecEngine``; ``stats`` counts requests served each way."""

    name = "think_ahead"

    def __init__(self, config: EngineConfig, build_base: Callable[[str, EngineConfig], StepEngine]):
        from transformers import AutoTokenizer

        if config.think_ahead is None:
            raise ValueError("the think_ahead backend needs a store: --think-ahead FILE (think-rec think-ahead)")
        if config.think_ahead_base not in ("vllm", "hf"):
            raise ValueError(f"think_ahead_base must be 'vllm' or 'hf', not {config.think_ahead_base!r}")
        self.config = config
        self.store = ThinkAheadStore(config.think_ahead)
        if self.store.meta["sids_sha"] != codebook_fingerprint(config.sids):
            raise ValueError(f"{config.think_ahead}: built for another SID codebook than {config.sids} (sids_sha)")
        self.served = ServedConfig.load(config.model)
        max_history = config.max_history or self.served.max_history
        for key, ours in (("model", str(Path(config.model).resolve())),
                          ("model_fingerprint", model_fingerprint(config.model)), ("max_history", max_history),
                          ("think_ranking", self.served.think_ranking)):
            if self.store.meta[key] != ours:
                raise ValueError(f"{config.think_ahead}: built with {key}={self.store.meta[key]!r}, but the server "
                                 f"has {ours!r}")
        if self.store.think and self.store.meta["rationales"] != self.served.rationale_samples:
            log.warning("%s holds %d rationales per user, the model is served with %d (rationale_samples): stored "
                        "users get other rationales than the live engine", config.think_ahead,
                        self.store.meta["rationales"], self.served.rationale_samples)
        if self.store.meta["history"] != "full":
            log.warning("%s holds %s histories (for evaluation): dataset users are served by the live engine",
                        config.think_ahead, self.store.meta["history"])
        self.base = build_base(config.think_ahead_base, config)
        self.tok = AutoTokenizer.from_pretrained(str(config.model))
        self.trie = SIDTrie.from_codebook(SIDCodebook.load(config.sids), self.tok)
        if self.store.meta["levels"] != self.trie.levels:
            raise ValueError(f"{config.think_ahead}: levels={self.store.meta['levels']} does not match {config.sids}")
        self.open_id, self.close_id = self.tok.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
        self.prior = load_prior(config.model)
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

    async def recommend(self, state: UserState, prompt: str, k: int, banned: set[str]) -> list[tuple[str, float]]:
        """Top ``k`` items from the stored prefixes of ``state`` continued by ``prompt`` (see the docstring)."""
        ids = self.tok.encode(prompt, add_special_tokens=False)
        width = max(k, self.store.meta["beam"])

        async def ranked(thought: Thought) -> list[tuple[str, float]]:
            after = thought.think_ids if self.served.ranks_after_rationale else []  # "history": empty think
            head = ids + [self.open_id] + after + [self.close_id] if self.store.think else ids
            beams = [(tuple(p), s) for p, s in thought.prefixes]
            step = functools.partial(self.base.child_logprobs, head, banned=banned)
            kept = expand(beams, await step([p for p, _ in beams]), width)
            items = ranked_items(self.trie, [beam for _, beam in kept])
            scores = functools.partial(self.base.item_logprobs, head) if self.trie.item_token_ids is not None else None
            return await fuse_steps(step, self.trie, items, state.history, self.prior, k=k, banned=banned,
                                    item_logprobs=scores, item_top=width)

        thoughts = state.thoughts if self.served.ranks_after_rationale else state.thoughts[:1]  # "history": one ranking
        return merge_scores(await asyncio.gather(*(ranked(t) for t in thoughts)), k)

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
        yield Recommendation(rationale, items, [t.text for t in state.thoughts[1:]] if think else [])
