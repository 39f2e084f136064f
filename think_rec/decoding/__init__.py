"""Constrained decoding over semantic IDs: the trie, the trie beam search and think-then-recommend."""
from .search import beam_search
from .think import ThinkResult, think_then_recommend
from .trie import SIDTrie

__all__ = ["SIDTrie", "ThinkResult", "beam_search", "think_then_recommend"]
