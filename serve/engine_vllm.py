"""``VLLMEngine``: think-then-recommend on vLLM's ``AsyncLLM``.

The rationale is one streamed request under ``SIDTrieLogitsProcessor`` in ``think`` mode (free text,
stops at ``</think>``), kept as on transformers (``finish_rationale``: closed at its last sentence end when the
model did not close it) and shown as there (``show_rationale``, citations left as SIDs): ``SentenceStream`` lets
the deltas out a sentence at a time, so they add up to the rationale the final ``Recommendation`` carries and the
beam search continues. A model served with ``rationale_samples`` > 1 draws the others beside it (the same
``decoding.think.Draw`` as on transformers, so the same texts), each ranked after as the greedy one is, the
rankings merged by mean probability (``merge_scores``).

Top-K items come from ``trie_beam_search`` over ``child_logprobs``, written as single-token requests: per SID
level, one request per beam whose prompt is ``prompt [<think>…</think>] <|sid_begin|> codes-so-far``, constrained
to the beam's trie children (``sid`` mode, banned items pruned), asking for the logprobs of every child; the
served ranking (``decoding.ranking.rank_steps``) fuses the beams with the model's collaborative prior, scoring the
prior's items through the same requests, and, for a model with item tokens, with its item head (one ``items``
request). Prefix caching (block size 32) makes each step cost about one token per beam. Scores are those of
``think_rec.decoding.search``: the processor sets each child to its log-probability over the SID tokens and vLLM
reports it (``logprobs_mode="processed_logits"``).
"""
from __future__ import annotations

import asyncio
import functools
import os
import uuid
from typing import TYPE_CHECKING, AsyncIterator, Sequence

import torch

from think_rec.decoding.ranking import rank_steps
from think_rec.decoding.think import (Draw, SentenceStream, citation_titles, draws, finish_rationale,
                                      merge_scores, show_rationale, sid_citations)
from think_rec.decoding.trie_beam import Children, ranked_items, trie_beam_search
from think_rec.model.artefacts import ServedConfig, load_prior

from .engine import THINK_CLOSE, THINK_OPEN, EngineConfig, Recommendation
from .logits_vllm import KEY, SIDTrieLogitsProcessor, load_trie

if TYPE_CHECKING:
    from vllm import AsyncEngineArgs


def engine_args(config: EngineConfig, width: int) -> AsyncEngineArgs:
    """vLLM's ``AsyncEngineArgs`` for ``config``; ``width`` (the widest trie node, or the catalog for a model
    with item tokens) sets ``max_logprobs``."""
    from vllm import AsyncEngineArgs

    return AsyncEngineArgs(
        model=str(config.model), enforce_eager=True, enable_prefix_caching=True, block_size=32,
        max_model_len=config.max_model_len, max_logprobs=max(20, width), logprobs_mode="processed_logits",
        logits_processors=[SIDTrieLogitsProcessor], additional_config={"think_rec_sids": str(config.sids)},
        limit_mm_per_prompt={"image": 0, "video": 0}, disable_log_stats=True,
        tensor_parallel_size=config.tensor_parallel_size, data_parallel_size=config.data_parallel_size,
        dtype=config.dtype or ServedConfig.load(config.model).dtype)


class VLLMEngine:
    """See the module docstring; the interface is ``serve.engine.RecEngine``."""

    name = "vllm"

    def __init__(self, config: EngineConfig):
        self.config = config
        self.trie, self.tok = load_trie(str(config.sids), str(config.model))
        self.open_id, self.close_id = self.tok.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
        self.width = max(len(c) for c in self.trie.child_tokens)  # widest trie node
        self.items = len(self.trie) if self.trie.item_token_ids is not None else 0
        self.prior, self.served = load_prior(config.model), ServedConfig.load(config.model)
        self.llm = None

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_gib))
        args = engine_args(self.config, max(self.width, self.items))
        self.llm = AsyncLLM.from_engine_args(args)
        await self.beam_search(self.tok.encode("warm up", add_special_tokens=False), 2, set())  # first step is slow

    def healthy(self) -> bool:
        return self.llm is not None and not self.llm.errored

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    async def _generate(self, ids: list[int], params):
        from vllm.inputs import TokensPrompt

        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
            yield out

    async def _step(self, ids: list[int], prefix: list[int], allowed: torch.Tensor, banned: list[str]) -> Children:
        from vllm import SamplingParams

        if not len(allowed):
            return allowed, torch.zeros(0)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.width, detokenize=False,
                                extra_args={KEY: {"mode": "sid", "prefix": prefix, "banned": banned}})
        final = None
        async for final in self._generate(ids + prefix, params):
            pass
        top = final.outputs[0].logprobs[0]  # every allowed child: the processor left nothing else finite
        return allowed, torch.tensor([top[t].logprob for t in allowed.tolist()])

    async def child_logprobs(self, ids: list[int], prefixes: Sequence[Sequence[int]],
                             banned: set[str] = frozenset()) -> list[Children]:
        """Per prefix (``<|sid_begin|>`` codes...), its trie children (minus ``banned`` items) after ``ids + prefix``
        with their log-probs (``trie_beam``): one single-token request each, run concurrently."""
        counts, banned_list = self.trie.banned_counts(banned), sorted(banned)
        return await asyncio.gather(*(self._step(ids, list(p), self.trie.allowed(p, counts), banned_list)
                                      for p in prefixes))

    async def item_logprobs(self, ids: list[int]) -> torch.Tensor:
        """The item head's log-probs of every item (``trie.items`` order) at the ``<|sid_begin|>`` after ``ids``:
        one single-token request over the item tokens (``items`` mode)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.items, detokenize=False,
                                extra_args={KEY: {"mode": "items"}})
        final = None
        async for final in self._generate(ids + [self.trie.first_token], params):
            pass
        top = final.outputs[0].logprobs[0]
        return torch.tensor([top[t].logprob for t in self.trie.item_token_ids.tolist()])

    async def beam_search(self, ids: list[int], k: int, banned: set[str]) -> list[tuple[str, float]]:
        """Top ``k`` distinct items after ``ids`` (beam width ``k``)."""
        beams = await trie_beam_search(functools.partial(self.child_logprobs, ids, banned=banned), self.trie, k)
        return ranked_items(self.trie, beams)

    def _think_params(self, max_think_tokens: int, history: Sequence[str], draw: Draw, delta: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(max_tokens=max_think_tokens, min_tokens=1, temperature=0.0,
                              stop_token_ids=[self.close_id], detokenize=False,
                              output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
                              extra_args={KEY: {"mode": "think", "citable": list(history), "draw": vars(draw)}})

    async def _draw(self, ids: list[int], max_think_tokens: int, history: Sequence[str], draw: Draw) -> list[int]:
        """One further rationale (``draw``), kept as the greedy one is (``finish_rationale``)."""
        final = None
        async for final in self._generate(ids, self._think_params(max_think_tokens, history, draw, False)):
            pass
        return finish_rationale(self.tok, final.outputs[0].token_ids, self.trie.first_token, self.trie.end_token)[0]

    async def _rank(self, ids: list[int], k: int, banned: set[str], history: Sequence[str]) -> list[tuple[str, float]]:
        return await rank_steps(functools.partial(self.child_logprobs, ids, banned=banned), self.trie, history,
                                self.prior, k=k, num_beams=self.served.num_beams, banned=banned,
                                item_logprobs=functools.partial(self.item_logprobs, ids) if self.items else None)

    async def stream(self, prompt: str, *, k: int, banned: set[str], think: bool, max_think_tokens: int,
                     history: Sequence[str] = ()) -> AsyncIterator[str | Recommendation]:
        ids = self.tok.encode(prompt, add_special_tokens=False)
        if not think:
            yield Recommendation("", await self._rank(ids, k, banned, history))
            return
        titles = citation_titles(self.tok, self.trie, sid_citations(self.tok, self.trie, history))
        lines = SentenceStream(self.tok, self.trie.first_token, self.trie.end_token, titles)
        samples = self.served.rationale_samples
        greedy, *others = draws(samples, samples > 1)
        head = ids + [self.open_id]
        drawn = [asyncio.ensure_future(self._draw(head, max_think_tokens, history, d))
                 for d in (others if max_think_tokens > 0 else [])]
        try:
            if max_think_tokens > 0:
                async for out in self._generate(head, self._think_params(max_think_tokens, history, greedy, True)):
                    if text := lines.feed(out.outputs[0].token_ids):
                        yield text
            kept, _, rest = lines.finish()
            if rest:
                yield rest
            thinks = [kept, *[await d for d in drawn]] if drawn else [kept]
        finally:
            for d in drawn:
                d.cancel()
        if self.served.ranks_after_rationale:
            ranked = await asyncio.gather(*(self._rank(head + t + [self.close_id], k, banned, history) for t in thinks))
            items = merge_scores(ranked, k)
        else:  # "history": one ranking, after an empty think
            items = await self._rank(head + [self.close_id], k, banned, history)
        yield Recommendation(lines.shown, items, [show_rationale(self.tok, t, titles)[0] for t in thinks[1:]])
