"""``HFEngine``: the same interface as ``VLLMEngine`` on transformers (for machines without vLLM).

Requests run one at a time in a worker thread: ``think_then_recommend`` when thinking, else
``decoding.ranking.rank`` (the served ranking: trie beams fused with the model's prior, scored as on vLLM).
The rationale arrives as one delta.
At most ``max_queue`` requests wait for the model (``EngineBusy`` beyond); a cancelled request (timeout,
client gone) keeps the model until its thread ends, so runs never overlap.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Sequence

import torch

from think_rec.decoding.ranking import rank
from think_rec.decoding.search import child_logprobs, item_logprobs
from think_rec.decoding.think import sid_citations, think_then_recommend
from think_rec.decoding.trie_beam import Children

from .engine import EngineBusy, EngineConfig, Recommendation


class HFEngine:
    """See the module docstring; the interface is ``serve.engine.RecEngine``."""

    name = "hf"

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model = self.processor = self.trie = self.prior = self.served = None
        self.lock = asyncio.Lock()
        self.waiting = 0

    async def start(self) -> None:
        from think_rec.model.artefacts import RecModel

        rec = await asyncio.to_thread(RecModel.load, self.config.model, self.config.sids)
        self.model, self.processor, self.trie = rec.model, rec.processor, rec.trie
        self.prior, self.served = rec.prior, rec.served

    def healthy(self) -> bool:
        return self.model is not None

    def shutdown(self) -> None:
        self.model = None

    async def exclusive(self, fn, *args):
        """``fn(*args)`` in a worker thread, alone on the model (see the module docstring)."""
        if self.waiting >= self.config.max_queue:
            raise EngineBusy(f"{self.waiting} requests are waiting for the model")
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        task.add_done_callback(self._release)
        return await asyncio.shield(task)

    def _release(self, task: asyncio.Future) -> None:
        self.lock.release()
        if not task.cancelled():
            task.exception()  # retrieved: a request cancelled meanwhile does not leave it unobserved

    async def child_logprobs(self, ids: list[int], prefixes: Sequence[Sequence[int]],
                             banned: set[str] = frozenset()) -> list[Children]:
        """Per prefix (``<|sid_begin|>`` codes..., all of one length), its trie children (minus ``banned`` items)
        after ``ids + prefix`` with their log-probs (``trie_beam``): one batched step, alone on the model."""
        return await self.exclusive(child_logprobs, self.model, self.processor, ids, prefixes, self.trie, banned)

    async def item_logprobs(self, ids: list[int]) -> torch.Tensor:
        """The item head's log-probs after ``ids`` (``decoding.search.item_logprobs``), alone on the model."""
        return (await self.exclusive(item_logprobs, self.model, self.processor, [ids], self.trie))[0]

    @torch.no_grad()
    def _run(self, prompt: str, k: int, banned: set[str], think: bool, max_think_tokens: int,
             history: Sequence[str]) -> Recommendation:
        if think:  # citations stay SID strings, as from vLLM: the API shows them as titles
            sids = sid_citations(self.processor, self.trie, history)
            samples = self.served.rationale_samples
            res = think_then_recommend(self.model, self.processor, [prompt], self.trie, k=k,
                                       num_beams=self.served.num_beams, max_think_tokens=max_think_tokens,
                                       num_rationales=samples, do_sample=samples > 1,
                                       exclude=[banned], citations=[sids], histories=[history], prior=self.prior,
                                       condition=self.served.ranks_after_rationale)[0]
            return Recommendation(res.rationales[0], res.items, res.rationales[1:])
        return Recommendation("", rank(self.model, self.processor, [prompt], [history], self.trie, self.prior, k=k,
                                       num_beams=self.served.num_beams, banned=[banned])[0])

    async def stream(self, prompt: str, *, k: int, banned: set[str], think: bool, max_think_tokens: int,
                     history: Sequence[str] = ()) -> AsyncIterator[str | Recommendation]:
        rec = await self.exclusive(self._run, prompt, k, banned, think, max_think_tokens, list(history))
        if rec.rationale:
            yield rec.rationale
        yield rec
