"""Constrained decoding over semantic IDs: the trie, its logits processor and beam search."""
from .beam import recommend
from .constraints import SIDConstrainedLogitsProcessor
from .trie import SIDTrie

__all__ = ["SIDConstrainedLogitsProcessor", "SIDTrie", "recommend"]
