"""Label softmaxes for the packed streams: each label against a group of tokens it can be, whole or sampled.

Decoding normalises a SID code over the SID tokens and an item over the item tokens, so a label needs scoring only
against its group's ``lm_head`` rows (``SequenceTrainer.label_groups``). On a large catalog the item tokens are
most of a step's FLOPs; a sampled softmax scores each item label against N of them drawn uniformly (shared by the
batch).
"""
from __future__ import annotations

import torch


def group_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, ids: torch.Tensor, target: torch.Tensor,
                        sampled_negatives: int = 0) -> torch.Tensor:
    """Summed cross-entropy of ``target`` over the sorted token ids ``ids`` (``head``'s rows); with
    0 < ``sampled_negatives`` < len(ids), against that many uniform draws of them (``sampled_logits``)."""
    if 0 < sampled_negatives < len(ids):
        logits, column = sampled_logits(hidden, head, ids, target, sampled_negatives)
    else:
        logits = hidden @ head.weight[ids].T + (head.bias[ids] if head.bias is not None else 0)
        column = torch.searchsorted(ids, target)
    return torch.nn.functional.cross_entropy(logits.float(), column, reduction="sum")


def sampled_logits(hidden: torch.Tensor, head: torch.nn.Module, ids: torch.Tensor, target: torch.Tensor,
                   n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled softmax: each row's logit for its ``target`` token (column 0) beside those of ``n`` of ``ids`` drawn
    uniformly without replacement (shared by the rows; -inf where a drawn token is the row's target)."""
    drawn = ids[torch.randperm(len(ids), device=ids.device)[:n]]
    bias = head.bias
    positive = (hidden * head.weight[target]).sum(-1, keepdim=True) + (bias[target, None] if bias is not None else 0)
    negative = hidden @ head.weight[drawn].T + (bias[drawn] if bias is not None else 0)
    negative = negative.masked_fill(drawn[None, :] == target[:, None], float("-inf"))
    return torch.cat([positive, negative], 1), torch.zeros(len(target), dtype=torch.long, device=hidden.device)
