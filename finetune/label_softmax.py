"""Label softmaxes for the packed streams: each label against a group of tokens it can be, whole or sampled.

Decoding normalises a SID code over the SID tokens and an item over the item tokens, so a label needs scoring only
against its group's ``lm_head`` rows (``SequenceTrainer.label_groups``). On a large catalog the item tokens are
most of a step's FLOPs; a sampled softmax scores each item label against N of them drawn uniformly (shared by the
batch). A teacher's distribution can soften the item labels (``distilled_cross_entropy``).
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
        logits, column = group_logits(hidden, head, ids), torch.searchsorted(ids, target)
    return torch.nn.functional.cross_entropy(logits.float(), column, reduction="sum")


def group_logits(hidden: torch.Tensor, head: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``hidden``'s logits over ``head``'s rows ``ids``."""
    return hidden @ head.weight[ids].T + (head.bias[ids] if head.bias is not None else 0)


def distilled_cross_entropy(logits: torch.Tensor, column: torch.Tensor, taught: torch.Tensor,
                            teacher_probs: torch.Tensor, teacher_columns: torch.Tensor, share: float) -> torch.Tensor:
    """Summed cross-entropy of ``logits`` against ``column``, where the rows ``taught`` (a mask) take a share
    ``share`` of their target from ``teacher_probs`` (one row per taught row) over the columns ``teacher_columns``."""
    logp = logits.float().log_softmax(-1)
    loss = -logp.gather(1, column[:, None]).squeeze(1)
    soft = -(teacher_probs.float() * logp[taught][:, teacher_columns]).sum(-1)
    return loss.masked_scatter(taught, (1 - share) * loss[taught] + share * soft).sum()


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
