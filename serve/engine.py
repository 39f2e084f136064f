"""The recommender engine interface shared by the vLLM and transformers backends.

An engine turns a rendered chat prompt (text ending in the assistant's generation header) into an
optional rationale (``<think>…</think>``, streamed as text deltas) and up to ``k`` distinct catalog
items ranked by the served ranking (``think_rec.decoding.ranking``: the trie beams fused with the model's
collaborative prior), never any of ``banned``. The engines are built by ``serve.engines.build_engine``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Protocol, Sequence

from think_rec.decoding.think import THINK_CLOSE, THINK_OPEN
from think_rec.decoding.trie_beam import Children

if TYPE_CHECKING:
    import torch

__all__ = ["THINK_CLOSE", "THINK_OPEN", "EngineBusy", "EngineConfig", "RecEngine", "Recommendation", "StepEngine",
           "run"]


class EngineBusy(RuntimeError):
    """The engine's queue is full: the request was not started (the API answers 503)."""


@dataclass
class Recommendation:
    """A rationale (empty when thinking is off) and ``(item_id, score)`` pairs, best first; ``samples``: the
    request's further rationales (``served.json`` ``rationale_samples``), which the API may show instead."""

    rationale: str
    items: list[tuple[str, float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)


@dataclass
class EngineConfig:
    """What both backends need: the merged model and the SID codebook folder."""

    model: Path
    sids: Path
    max_model_len: int = 4096
    kv_cache_gib: int = 1  # vLLM CPU KV-cache reserve (GiB)
    think_ahead: Path | None = None  # the store of the think_ahead backend (serve.think_ahead)
    think_ahead_base: str = "vllm"  # the engine it wraps for the last level and for fallbacks
    max_history: int | None = None  # the server's (None: served.json's); a think_ahead store must match it
    max_queue: int = 64  # hf: requests waiting for the model beyond the running one (EngineBusy beyond)
    tensor_parallel_size: int = 1  # vllm: GPUs each model replica is split over
    data_parallel_size: int = 1  # vllm: model replicas, requests balanced over them
    dtype: str | None = None  # vllm: None = the model's served.json ("auto" serves float32 weights in bf16)


class RecEngine(Protocol):
    """One interface over vLLM and transformers."""

    name: str

    async def start(self) -> None:
        """Load the model (inside the serving event loop)."""

    async def stream(self, prompt: str, *, k: int, banned: set[str], think: bool, max_think_tokens: int,
                     history: Sequence[str] = ()) -> AsyncIterator[str | Recommendation]:
        """Yield rationale text deltas, then one final ``Recommendation``. ``history``: the item ids in the
        prompt (Think-Ahead looks the user's stored state up by it; the other backends ignore it)."""

    def healthy(self) -> bool:
        """Started and able to serve."""

    def shutdown(self) -> None:
        """Free the model (and engine processes)."""


class StepEngine(RecEngine, Protocol):
    """An engine that also scores one trie beam step (``vllm``, ``hf``): what Think-Ahead wraps."""

    async def child_logprobs(self, ids: list[int], prefixes: Sequence[Sequence[int]],
                             banned: set[str] = frozenset()) -> list[Children]:
        """Per prefix (``<|sid_begin|>`` codes...), its trie children (minus ``banned`` items) after
        ``ids + prefix`` with their log-probs (``think_rec.decoding.trie_beam``)."""

    async def item_logprobs(self, ids: list[int]) -> torch.Tensor:
        """The item head's log-probs of every catalog item (``trie.items`` order) at the ``<|sid_begin|>`` after
        ``ids`` (models with item tokens)."""


async def run(engine: RecEngine, prompt: str, *, k: int, banned: set[str] = frozenset(), think: bool = False,
              max_think_tokens: int = 64, history: Sequence[str] = ()) -> Recommendation:
    """``engine.stream`` without the deltas: the final ``Recommendation``."""
    async for event in engine.stream(prompt, k=k, banned=set(banned), think=think,
                                     max_think_tokens=max_think_tokens, history=history):
        if isinstance(event, Recommendation):
            return event
    raise RuntimeError(f"{engine.name}: stream ended without a recommendation")
