"""``SIDTrie``: a prefix trie over the token ids of every catalog item's SID.

Each item reads ``<|sid_begin|> <s_a_..> ... <|sid_end|>``; every trie node keeps its allowed
next-token ids as a tensor and how many items lie below it, so per-request exclusions prune a
node exactly when all of its items are banned. ``table`` holds the same trie as tensors (children in CSR
form) for the batched beam search.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import torch

from ..itemic.codebook import SIDCodebook


@dataclass
class TrieTable:
    """The trie as tensors on one device: node ``v``'s children are edges ``first[v] .. first[v] + degree[v] - 1``
    (token order), edge ``e`` leads to node ``child[e]`` by token ``token[e]``, column ``column[e]`` of the
    SID tokens (``SIDTrie.token_ids``); ``count[v]`` items lie below ``v``; ``width[d]``: the most children of a
    node of depth ``d`` (its prefix length)."""

    first: torch.Tensor
    degree: torch.Tensor
    child: torch.Tensor
    token: torch.Tensor
    column: torch.Tensor
    count: torch.Tensor
    width: list[int]


class SIDTrie:
    """Prefix trie: token-id prefix -> node; a full sequence -> item id."""

    def __init__(self, sequences: dict[str, list[int]], codebook: SIDCodebook | None = None):
        if not sequences:
            raise ValueError("SIDTrie: no items")
        self.codebook = codebook
        self.node_of: dict[tuple[int, ...], int] = {(): 0}
        children: list[list[tuple[int, int]]] = [[]]  # per node, (token, child node)
        depth = [0]
        self.count: list[int] = [0]
        self.item_of: dict[tuple[int, ...], str] = {}
        self.path_of: dict[str, list[int]] = {}
        self.tokens_of: dict[str, tuple[int, ...]] = {}
        for item, seq in sequences.items():
            seq = tuple(int(t) for t in seq)
            if seq in self.item_of:
                raise ValueError(f"SIDTrie: items {self.item_of[seq]!r} and {item!r} share a token sequence")
            if self.item_of and len(seq) != len(next(iter(self.item_of))):
                others = len(next(iter(self.item_of)))
                raise ValueError(f"SIDTrie: item {item!r} has {len(seq)} tokens, others {others}")
            self.item_of[seq] = item
            self.tokens_of[item] = seq
            path = [0]
            for d in range(1, len(seq) + 1):
                node = self.node_of.get(seq[:d])
                if node is None:
                    node = self.node_of[seq[:d]] = len(children)
                    children.append([])
                    depth.append(d)
                    self.count.append(0)
                    children[path[-1]].append((seq[d - 1], node))
                path.append(node)
            for node in path:
                self.count[node] += 1
            self.path_of[item] = path
        children = [sorted(c) for c in children]
        self.child_tokens = [torch.tensor([t for t, _ in c], dtype=torch.long) for c in children]
        first = next(iter(self.item_of))
        self.first_token, self.end_token = first[0], first[-1]
        self.levels = len(first) - 2  # code tokens between the begin and end markers
        self.token_ids = torch.tensor(sorted({t for seq in self.item_of for t in seq}), dtype=torch.long)
        self.items = list(self.tokens_of)
        self.item_index = {item: n for n, item in enumerate(self.items)}
        self.item_token_ids: torch.Tensor | None = None  # the item-level head's rows, aligned with ``items``
        degree = torch.tensor([len(c) for c in children])
        edges = torch.tensor([e for c in children for e in c], dtype=torch.long)
        widths = [0] * (len(first) + 1)
        for d, n in zip(depth, degree.tolist()):
            widths[d] = max(widths[d], n)
        child, token = edges.T.flip(0).contiguous()
        self._table = TrieTable(degree.cumsum(0) - degree, degree, child, token,
                                torch.searchsorted(self.token_ids, token), torch.tensor(self.count), widths)
        self._tables: dict[torch.device, TrieTable] = {}

    @classmethod
    def from_codebook(cls, codebook: SIDCodebook, tokenizer) -> "SIDTrie":
        """Map each item's SID tokens through ``tokenizer`` (which must hold them as single tokens)."""
        tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        vocab = codebook.vocabulary()
        ids = tok.convert_tokens_to_ids(vocab)
        missing = [t for t, i in zip(vocab, ids) if i is None or i == tok.unk_token_id]
        if missing:
            raise ValueError(f"tokenizer lacks {len(missing)} SID tokens, e.g. {missing[:3]}; "
                             "add them first (think_rec.model add_sid_tokens)")
        id_of = dict(zip(vocab, ids))
        trie = cls({item: [id_of[t] for t in codebook.tokens(item)] for item in codebook.codes}, codebook)
        item_ids = tok.convert_tokens_to_ids(codebook.item_tokens())
        if all(i is not None and i != tok.unk_token_id for i in item_ids):  # a model with item-level memory
            trie.item_token_ids = torch.tensor(item_ids, dtype=torch.long)
        return trie

    def table(self, device: torch.device | str = "cpu") -> TrieTable:
        """The trie's ``TrieTable`` on ``device`` (moved once)."""
        device = torch.device(device)
        if device not in self._tables:
            t = self._table
            moved = (x.to(device) for x in (t.first, t.degree, t.child, t.token, t.column, t.count))
            self._tables[device] = TrieTable(*moved, t.width)
        return self._tables[device]

    def dead_nodes(self, banned: Iterable[set[str]]) -> list[list[int]]:
        """Per set of banned items, the nodes all of whose items are banned (pruned by the search)."""
        return [[v for v, n in self.banned_counts(items).items() if n == self.count[v]] for items in banned]

    def __len__(self) -> int:
        return len(self.item_of)

    def allowed(self, prefix_ids: Iterable[int], banned: Counter | None = None) -> torch.Tensor:
        """Next-token ids allowed after ``prefix_ids`` (empty if the prefix is off the trie or complete).

        ``banned`` maps node -> number of excluded items below it (see ``banned_counts``)."""
        prefix = tuple(int(t) for t in prefix_ids)
        node = self.node_of.get(prefix)
        if node is None:
            return self.child_tokens[0][:0]
        tokens = self.child_tokens[node]
        if not banned or not banned.get(node):
            return tokens
        keep = [t for t in tokens.tolist()
                if banned.get(self.node_of[prefix + (t,)], 0) < self.count[self.node_of[prefix + (t,)]]]
        return torch.tensor(keep, dtype=torch.long)

    def item_at(self, prefix_ids: Iterable[int]) -> str | None:
        """The item whose full token sequence is ``prefix_ids``, else None."""
        return self.item_of.get(tuple(int(t) for t in prefix_ids))

    def banned_counts(self, items: Iterable[str]) -> Counter:
        """Per node, how many of ``items`` (unknown ids ignored) lie below it."""
        counts: Counter = Counter()
        for item in set(items):
            counts.update(self.path_of.get(item, ()))
        return counts
