"""The item-level head's loss: item-level memory beside the SID codes.

A model with item tokens (``think_rec.model.itemic_tokens.add_item_tokens``) scores, at every ``<|sid_begin|>``,
the whole catalog by the item tokens' ``lm_head`` rows. Trained here as SASRec-CE is: wherever the SID after a
``<|sid_begin|>`` is supervised, a cross-entropy over the item rows with that SID's item as the label, added to
the SID loss: with ``weight`` 1 the mean cross-entropy per item weighs as much as the SID loss's mean per token
(two means; the SID loss has about ``levels + 2`` tokens per item). The final hidden states are caught by a hook
on the decoder's last norm, so the trainer's own loss path (TRL's fused LM head included) runs unchanged.

With ``sampled_negatives`` N each label is scored against N item tokens drawn uniformly (``label_softmax.py``).
With ``distill`` > 0 the label is softened by a bigram teacher (prior distillation): a share ``distill`` of the
target goes to the training split's successor distribution of the item before it (``MarkovModel.transitions``),
so the head learns which item follows which beyond the one observed successor.
With ``item_teacher`` ``(model, share)`` a share of each label goes instead to that model's next-item distribution
after the same sequence's earlier items written as item tokens (the items phase's stream): the item-level memory of
the items phase taught to the head that reads SIDs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from think_rec.decoding.prior import MarkovModel
from think_rec.decoding.trie import SIDTrie

from .label_softmax import group_cross_entropy


def final_norm(model) -> torch.nn.Module:
    """The module whose output is the decoder's last hidden state (what ``lm_head`` reads)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder().norm


class ItemHeadLoss:
    """Callable on a batch after the forward: the weighted item cross-entropy (0 when no SID is supervised)."""

    def __init__(self, model, trie: SIDTrie, weight: float = 1.0, *, teacher: MarkovModel | None = None,
                 distill: float = 0.0, sampled_negatives: int = 0,
                 item_teacher: tuple[torch.nn.Module, float] | None = None):
        if trie.item_token_ids is None:
            raise ValueError("the model has no item tokens: add_item_tokens first")
        if not 0.0 <= distill <= 1.0 or (distill and teacher is None):
            raise ValueError(f"distill must be in [0, 1] and needs a teacher, got {distill!r}")
        if sampled_negatives and (distill or item_teacher or
                                  not isinstance(model.get_output_embeddings(), torch.nn.Linear)):
            raise ValueError("sampled_negatives needs a plain output layer (full training) and no distill or teacher")
        if distill and item_teacher:
            raise ValueError("distill (a bigram teacher) and item_teacher are alternatives: set one")
        self.item_teacher = item_teacher
        if item_teacher is not None:
            item_teacher[0].eval().requires_grad_(False)
        self.model, self.weight, self.distill, self.sampled_negatives = model, weight, distill, sampled_negatives
        self.begin, self.levels = trie.first_token, trie.levels
        self.index = {seq[1:-1]: n for n, seq in enumerate(trie.tokens_of[i] for i in trie.items)}
        self.rows = trie.item_token_ids
        self.successors = successor_rows(teacher, trie.items) if distill else {}
        self.hidden: torch.Tensor | None = None
        final_norm(model).register_forward_hook(self._catch)

    def _catch(self, module, args, output) -> None:
        self.hidden = output

    def _item_at(self, ids: list[int], begin: int) -> int | None:
        return self.index.get(tuple(ids[begin + 1:begin + 1 + self.levels]))

    def targets(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rows, positions, item indices and previous item indices (-1: none in the row) of every
        ``<|sid_begin|>`` whose next token is supervised and whose whole SID follows in ``input_ids`` (``labels``
        unshifted, -100 = not supervised). The previous item is the whole SID after the row's previous
        ``<|sid_begin|>``: in a packed row, a supervised item's predecessor is in its own sequence."""
        width = input_ids.shape[1]
        supervised = (input_ids[:, :-1] == self.begin) & (labels[:, 1:] != -100)
        found = []
        for r in supervised.any(1).nonzero().flatten().tolist():
            ids = input_ids[r].tolist()
            begins = [c for c, t in enumerate(ids) if t == self.begin]
            for before, c in zip([None, *begins], begins):
                item = self._item_at(ids, c) if c + self.levels < width and supervised[r, c] else None
                if item is not None:
                    prev = None if before is None else self._item_at(ids, before)
                    found.append((r, c, item, -1 if prev is None else prev))
        return tuple(torch.tensor([f[n] for f in found], dtype=torch.long) for n in range(4))

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor, denominator: torch.Tensor | int,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``weight`` x summed cross-entropy x SID length / ``denominator`` (the SID loss's token count: about
        ``weight`` x the mean cross-entropy per item). ``position_ids`` (packed rows) mark where sequences start."""
        hidden, self.hidden = self.hidden, None
        rows, cols, items, prev = self.targets(input_ids, labels)
        if not len(items):
            return hidden.sum() * 0.0
        head = self.model.get_output_embeddings()  # called, not read: peft's token rows apply
        hidden = hidden[rows.to(hidden.device), cols.to(hidden.device)]
        if 0 < self.sampled_negatives < len(self.rows):
            ids = self.rows.to(hidden.device)
            loss = group_cross_entropy(hidden, head, ids, ids[items.to(hidden.device)], self.sampled_negatives)
        else:
            target = self.soft_targets(items, prev) if self.distill else items
            if self.item_teacher is not None:
                target = self.taught_targets(input_ids, position_ids, rows, cols, items)
            logits = head(hidden)[:, self.rows.to(hidden.device)]
            loss = F.cross_entropy(logits.float(), target.to(hidden.device), reduction="sum")
        return self.weight * loss * (self.levels + 2) / torch.as_tensor(denominator).clamp(min=1)

    def soft_targets(self, items: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Each label with a share ``distill`` moved to the successors of the item before it (where it has any)."""
        target = F.one_hot(items, len(self.rows)).float()
        for n, p in enumerate(prev.tolist()):
            if p in self.successors:
                succ, probs = self.successors[p]
                target[n] *= 1 - self.distill
                target[n, succ] += self.distill * probs
        return target

    @torch.no_grad()
    def taught_targets(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, rows: torch.Tensor,
                       cols: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Each label with a share moved to the item teacher's distribution after the earlier items of its sequence
        (a row, or in a packed row the span from a ``position_ids`` 0), one teacher forward per sequence."""
        teacher, share = self.item_teacher
        starts = torch.zeros_like(input_ids, dtype=torch.bool) if position_ids is None else position_ids == 0
        sequence = starts.long().cumsum(1)
        streams: dict[tuple[int, int], list[int]] = {}  # (row, sequence) -> its items, in order
        place: dict[tuple[int, int], tuple[tuple[int, int], int]] = {}  # (row, begin) -> (row, sequence), index
        for r in sorted(set(rows.tolist())):
            ids = input_ids[r].tolist()
            for c in (input_ids[r] == self.begin).nonzero().flatten().tolist():
                item = self._item_at(ids, c)
                if item is not None:
                    key = (r, int(sequence[r, c]))
                    place[r, c] = key, len(streams.setdefault(key, []))
                    streams[key].append(item)
        keys = list(streams)
        slot = {k: n for n, k in enumerate(keys)}
        width = max(len(v) for v in streams.values())
        tokens = torch.zeros(len(keys), width, dtype=torch.long)
        mask = torch.zeros(len(keys), width, dtype=torch.long)
        for n, k in enumerate(keys):
            tokens[n, :len(streams[k])] = self.rows[streams[k]]
            mask[n, :len(streams[k])] = 1
        device = input_ids.device
        teacher.to(device)  # where the batch is (a no-op after the first call)
        logits = teacher(input_ids=tokens.to(device), attention_mask=mask.to(device), use_cache=False).logits
        probs = logits[..., self.rows.to(device)].float().softmax(-1).to(rows.device)
        target = F.one_hot(items, len(self.rows)).float()
        for n, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
            key, index = place[r, c]
            if index:  # the item after index earlier items: the teacher's prediction at the last of them
                target[n] = (1 - share) * target[n] + share * probs[slot[key], index - 1]
        return target


def successor_rows(teacher: MarkovModel, items: list[str]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Item index -> (indices, probabilities) of its successors in the teacher's training sequences."""
    index = {item: n for n, item in enumerate(items)}
    out = {}
    for item, counts in teacher.transitions.items():
        succ = [(index[j], c) for j, c in counts.items() if j in index]
        if item in index and succ:
            idx, c = zip(*succ)
            out[index[item]] = (torch.tensor(idx), torch.tensor(c, dtype=torch.float) / sum(c))
    return out
