"""Model selection on the valid split: rank a seeded sample of valid users every N steps, keep the best weights.

The test split is never read: the callback gets a scorer over valid (history, target) examples only: trie beam
search over the SID tokens (``valid_ndcg10``), or, for the item-token stream of the ``items`` phase, the item
tokens' logits after the stream (``next_item_ndcg10``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import TrainerCallback

from think_rec.decoding.search import beam_search, left_pad
from think_rec.decoding.trie import SIDTrie
from think_rec.eval.evaluate import top_k_from_scores

PromptFn = Callable[[list[str]], list[int]]
Scorer = Callable[[torch.nn.Module], float]


def ndcg_at_10(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> float:
    """Mean NDCG@10 with one relevant item per row."""
    total = 0.0
    for row, target in zip(ranked, targets):
        if target in row[:10]:
            total += 1.0 / math.log2(list(row).index(target) + 2)
    return total / max(len(targets), 1)


def valid_ndcg10(model, tokenizer, trie: SIDTrie, prompt: PromptFn, histories: Sequence[list[str]],
                 targets: Sequence[str], *, num_beams: int = 20, exclude_history: bool = True) -> float:
    """NDCG@10 of trie beam search over ``prompt(history)`` for each valid example (the model in eval mode)."""
    ranked = beam_search(model, tokenizer, [prompt(h) for h in histories], trie, num_beams=num_beams, k=10,
                         exclude=[set(h) for h in histories] if exclude_history else None)
    return ndcg_at_10([[item for item, _ in row] for row in ranked], targets)


@torch.no_grad()
def next_item_ndcg10(model, item_token_ids: dict[str, int], prompt: PromptFn, histories: Sequence[list[str]],
                     targets: Sequence[str], *, exclude_history: bool = True,
                     batch_size: int = 128) -> float:
    """NDCG@10 of the item tokens' logits at the last position of ``prompt(history)`` (an item-token stream), the
    whole catalog ranked (history items last when ``exclude_history``)."""
    items = list(item_token_ids)
    rows = torch.tensor([item_token_ids[i] for i in items])
    ranked = []
    for start in range(0, len(histories), batch_size):
        batch = histories[start:start + batch_size]
        ids, mask = left_pad([prompt(h) for h in batch], 0)  # pads are masked: any id does
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                       position_ids=positions.to(model.device), use_cache=False, logits_to_keep=1).logits
        ranked += top_k_from_scores(logits[:, -1, rows.to(logits.device)].cpu(), items, batch, 10, exclude_history)
    return ndcg_at_10(ranked, targets)


class ValidSelection(TrainerCallback):
    """Every ``every`` steps (and at the end) scores valid NDCG@10; the best trainable weights are restored
    when training ends. ``patience`` > 0 stops after that many evaluations without a better score."""

    def __init__(self, score: Scorer, every: int, *, patience: int = 0, log_path: str | Path | None = None):
        if every < 1:
            raise ValueError(f"ValidSelection: every must be >= 1, got {every}")
        self.score, self.every, self.patience = score, every, patience
        self.log_path = Path(log_path) if log_path else None
        self.history: list[dict[str, float]] = []
        self.best, self.best_state, self.bad, self.last_step = -1.0, None, 0, -1

    def _evaluate(self, model, state) -> float:
        was_training = model.training
        model.eval()
        score = self.score(model)
        model.train(was_training)
        self.history.append({"step": state.global_step, "tokens_seen": state.num_input_tokens_seen,
                             "valid_ndcg@10": score})
        self.last_step = state.global_step
        if score > self.best:
            self.best, self.bad = score, 0
            self.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.bad += 1
        if self.log_path:
            self.log_path.write_text(json.dumps({"best_valid_ndcg@10": self.best, "evaluations": self.history},
                                                indent=1))
        return score

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._evaluate(model, state)
            if self.patience and self.bad >= self.patience:
                control.should_training_stop = True
                control.should_save = True
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != self.last_step and state.global_step > 0:
            self._evaluate(model, state)
        if self.best_state is not None:
            with torch.no_grad():
                params = dict(model.named_parameters())
                for name, value in self.best_state.items():
                    params[name].copy_(value)
        return control
