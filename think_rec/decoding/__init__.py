"""Constrained decoding over semantic IDs: the trie, its logits processor and beam search."""
from .beam import recommend
from .constraints import SIDConstrainedLogitsProcessor
from .think import ThinkResult, think_then_recommend
from .trie import SIDTrie

__all__ = ["SIDConstrainedLogitsProcessor", "SIDTrie", "ThinkResult", "recommend", "think_then_recommend"]
