"""Scaled embeddings (``AlignConfig.scaled_embeddings``), SASRec and Gemma's input scaling with standard weights.

SASRec and Gemma multiply token embeddings by sqrt(hidden) at every forward. ``scale_embeddings`` writes that factor
into a model's weights instead (tied: the final norm divided by it), which any loader, vLLM included, runs unchanged.
Adam's steps do not scale with a parameter, though: the multiplied form moves each input row s times faster than the
written one. Giving the embeddings lr x s and the final norm lr / s restores the multiplied form's training (exactly,
but for Adam's eps: it meets embedding gradients s times smaller). Measured (Scientific, the items phase alone,
2,000 valid users): the written weights alone score as before (0.071), the multiplied form 0.086 and the written one
at these learning rates 0.084 (SASRec-CE 0.083 on the same users).
"""
from __future__ import annotations

import torch


def embedding_scale(model) -> float:
    """sqrt(hidden) of the model's text stack: the factor both functions below use."""
    return model.config.get_text_config().hidden_size ** 0.5


@torch.no_grad()
def scale_embeddings(model) -> None:
    """Token embeddings at the residual stream's scale: input rows x sqrt(hidden), and with tied weights the final
    norm divided by the same factor, so the logits are unchanged. Random-init ``N(0, 0.02)`` rows are ~10x smaller
    than what the blocks add to the residual stream: the item a position holds is drowned out."""
    scale = embedding_scale(model)
    model.get_input_embeddings().weight.mul_(scale)
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        model.get_decoder().norm.weight.div_(scale)


def scale_embedding_lr(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> float:
    """Move the input embeddings into a param group at lr x sqrt(hidden) and the final norm into one at
    lr / sqrt(hidden) (each keeps its group's other settings); returns the factor. Call before the first step."""
    scale = embedding_scale(model)
    for param, factor in ((model.get_input_embeddings().weight, scale), (model.get_decoder().norm.weight, 1 / scale)):
        group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            raise ValueError(f"scaled_embeddings: a {tuple(param.shape)} parameter is not being trained")
        group["params"] = [p for p in group["params"] if p is not param]
        optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": [param],
                                   "lr": group["lr"] * factor})
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return scale
