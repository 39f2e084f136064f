"""Training-time dropout for models trained from scratch (the Qwen-VL text stack has attention dropout only)."""
from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle


def _drop_output(p: float):
    def hook(module: nn.Module, args, output):
        if not module.training:
            return output
        if isinstance(output, tuple):
            return (nn.functional.dropout(output[0], p, True), *output[1:])
        return nn.functional.dropout(output, p, True)
    return hook


def add_dropout(model: nn.Module, p: float) -> list[RemovableHandle]:
    """GPT-2-style dropout at rate ``p`` on the token embeddings, the attention probabilities and both residual
    branches (attention and MLP outputs) of every language-model layer. It acts in training mode only and
    nothing of it is saved with the weights; returns the hook handles."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    handles = [model.get_input_embeddings().register_forward_hook(_drop_output(p))]
    layers = 0
    for name, module in model.named_modules():
        if "visual" in name:  # the vision tower of a VLM; a text-only base has none
            continue
        if name.endswith(".self_attn"):
            module.attention_dropout = p
            layers += 1
        if name.endswith((".self_attn", ".mlp")):
            handles.append(module.register_forward_hook(_drop_output(p)))
    if not layers:
        raise ValueError(f"{type(model).__name__}: no language-model attention layers found for dropout")
    return handles
