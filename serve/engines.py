"""``build_engine``: the engine factory, apart from the interface (``serve.engine``) the engines implement."""
from __future__ import annotations

from .engine import EngineConfig, RecEngine


def build_engine(backend: str, config: EngineConfig) -> RecEngine:
    """``"vllm"``, ``"hf"`` (transformers) or ``"think_ahead"`` (``config.think_ahead`` store)."""
    if backend == "vllm":
        from .engine_vllm import VLLMEngine

        return VLLMEngine(config)
    if backend == "hf":
        from .engine_hf import HFEngine

        return HFEngine(config)
    if backend == "think_ahead":
        from .think_ahead import ThinkAheadEngine

        return ThinkAheadEngine(config, build_engine)
    raise ValueError(f"backend must be 'vllm', 'hf' or 'think_ahead', not {backend!r}")
