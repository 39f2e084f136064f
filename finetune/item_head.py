"""The item-level head's loss: item-level memory beside the SID codes.

A model with item tokens (``think_rec.model.itemic_tokens.add_item_tokens``) scores, at every ``<|sid_begin|>``,
the whole catalog by the item tokens' ``lm_head`` rows. Trained here as SASRec-CE is: wherever the SID after a
``<|sid_begin|>`` is supervised, a cross-entropy over the item rows with that SID's item as the label, added to
the SID loss: with ``weight`` 1 the mean cross-entropy per item weighs as much as the SID loss's mean per token
(two means; the SID loss has about ``levels + 2`` tokens per item). The final hidden states are caught by a hook
on the decoder's last norm, so the trainer's own loss path (TRL's fused LM head included) runs unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from think_rec.decoding.trie import SIDTrie


def final_norm(model) -> torch.nn.Module:
    """The module whose output is the decoder's last hidden state (what ``lm_head`` reads)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder().norm


class ItemHeadLoss:
    """Callable on a batch after the forward: the weighted item cross-entropy (0 when no SID is supervised)."""

    def __init__(self, model, trie: SIDTrie, weight: float = 1.0):
        if trie.item_token_ids is None:
            raise ValueError("the model has no item tokens: add_item_tokens first")
        self.model, self.weight = model, weight
        self.begin, self.levels = trie.first_token, trie.levels
        self.index = {seq[1:-1]: n for n, seq in enumerate(trie.tokens_of[i] for i in trie.items)}
        self.rows = trie.item_token_ids
        self.hidden: torch.Tensor | None = None
        final_norm(model).register_forward_hook(self._catch)

    def _catch(self, module, args, output) -> None:
        self.hidden = output

    def targets(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, positions and item indices of every ``<|sid_begin|>`` whose next token is supervised and whose
        whole SID follows in ``input_ids`` (``labels`` unshifted, -100 = not supervised)."""
        width = input_ids.shape[1]
        rows, cols = ((input_ids[:, :-1] == self.begin) & (labels[:, 1:] != -100)).nonzero(as_tuple=True)
        found = [(r, c, self.index.get(tuple(input_ids[r, c + 1:c + 1 + self.levels].tolist())))
                 for r, c in zip(rows.tolist(), cols.tolist()) if c + self.levels < width]
        found = [f for f in found if f[2] is not None]
        return tuple(torch.tensor([f[n] for f in found], dtype=torch.long) for n in range(3))

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor, denominator: torch.Tensor | int) -> torch.Tensor:
        """``weight`` x summed cross-entropy x SID length / ``denominator`` (the SID loss's token count: about
        ``weight`` x the mean cross-entropy per item)."""
        hidden, self.hidden = self.hidden, None
        rows, cols, items = self.targets(input_ids, labels)
        if not len(items):
            return hidden.sum() * 0.0
        head = self.model.get_output_embeddings()  # called, not read: peft's token rows apply
        logits = head(hidden[rows.to(hidden.device), cols.to(hidden.device)])[:, self.rows.to(hidden.device)]
        loss = F.cross_entropy(logits.float(), items.to(hidden.device), reduction="sum")
        return self.weight * loss * (self.levels + 2) / torch.as_tensor(denominator).clamp(min=1)
