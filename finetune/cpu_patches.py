"""Make TRL's fused LM-head loss score only labelled positions on CPU.

TRL 1.16 projects through the LM head only the positions whose label is not -100 when Triton is
available, and every position elsewhere (static tile shapes for graph compilers such as Neuron). On a
CPU in eager mode that wastes the head's forward and backward on every prompt token: stage-1 targets
are ~5 SID tokens after a ~200-token prompt. Compacting is exact (same loss and gradients).
"""
from __future__ import annotations

import torch
import trl.trainer.utils as trl_utils

_original = trl_utils._use_triton


def _compact_on_cpu(device: torch.device) -> bool:
    return device.type == "cpu" or _original(device)


def compact_fused_lm_head_on_cpu() -> None:
    """Idempotent; affects only TRL's choice of positions, not which kernel folds the tiles."""
    trl_utils._use_triton = _compact_on_cpu
