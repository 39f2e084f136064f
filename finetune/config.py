"""``AlignConfig``: TRL's ``SFTConfig`` plus what stage 1 (itemic alignment) needs, read from YAML."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from trl import SFTConfig

PHASES = ("warmup", "multitask", "both")


def _mix(value: dict | str | None, name: str) -> dict[str, float] | None:
    if value is None or isinstance(value, dict):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: expected a mapping like '{{\"sequential\": 1.0}}', got {value!r}") from e


@dataclass
class AlignConfig(SFTConfig):
    """Itemic alignment: token warm-up (new SID rows only), then multi-task LoRA integration.

    ``max_steps``/``num_train_epochs``/``learning_rate`` drive the multi-task phase; the warm-up
    has its own ``warmup_*`` values (``-1``/``None`` = same as multi-task).
    """

    model: str = field(default="", metadata={"help": "Base model: folder, hub id or think_rec preset name."})
    data_dir: str = field(default="", metadata={"help": "Prepared RecDataset folder."})
    sids_dir: str = field(default="", metadata={"help": "Folder holding sid_meta.json."})
    phase: str = field(default="both", metadata={"help": "warmup | multitask | both"})
    task_mix: dict | str | None = field(default=None, metadata={
        "help": "Task fractions, e.g. {persona: 0.24, sequential: 0.66, captioning: 0.05, general: 0.05}."})
    warmup_task_mix: dict | str | None = field(default=None, metadata={"help": "Warm-up mix (default: task_mix)."})
    num_examples: int | None = field(default=None, metadata={"help": "Examples per phase (default: from data)."})
    max_history: int = field(default=20, metadata={"help": "Items of history per prompt."})
    with_images: bool = field(default=True, metadata={"help": "Interleave item images into histories."})
    max_images: int = field(default=4, metadata={"help": "Images per prompt (the most recent items)."})
    warmup_max_steps: int = field(default=-1, metadata={"help": "Warm-up steps (-1: same as max_steps)."})
    warmup_num_train_epochs: float | None = field(default=None, metadata={"help": "Warm-up epochs."})
    warmup_learning_rate: float = field(default=1e-3, metadata={"help": "Warm-up lr (new rows only)."})
    lora_r: int = field(default=16, metadata={
        "help": "LoRA rank (multi-task phase); 0 = full fine-tuning (the from-scratch tiny preset)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    quantization: str | None = field(default=None, metadata={"help": "None | 4bit | 8bit (QLoRA)."})
    time_budget_minutes: float | None = field(default=None, metadata={"help": "Stop (and checkpoint) when spent."})
    warmup_budget_fraction: float = field(default=0.25, metadata={"help": "Share of the budget for warm-up."})

    # SFTConfig defaults changed for this stage
    assistant_only_loss: bool = True
    gradient_checkpointing: bool = False
    report_to: None | str | list[str] = "none"
    save_steps: float = 100
    save_total_limit: int | None = 2
    logging_steps: float = 5
    max_length: int | None = 2048

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase: expected one of {PHASES}, got {self.phase!r}")
        if self.quantization not in (None, "4bit", "8bit"):
            raise ValueError(f"quantization: expected None, '4bit' or '8bit', got {self.quantization!r}")
        self.task_mix = _mix(self.task_mix, "task_mix")
        self.warmup_task_mix = _mix(self.warmup_task_mix, "warmup_task_mix")
        if not torch.cuda.is_available():
            self.use_cpu, self.bf16, self.fp16 = True, False, False
        super().__post_init__()

    def phase_args(self, phase: str) -> SFTConfig:
        """Plain ``SFTConfig`` for one phase, writing to ``output_dir/<phase>``."""
        kw: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(SFTConfig) if f.init}
        kw["output_dir"] = str(Path(self.output_dir) / phase)
        if phase == "warmup":
            kw["learning_rate"] = self.warmup_learning_rate
            if self.warmup_max_steps != -1:
                kw["max_steps"] = self.warmup_max_steps
            if self.warmup_num_train_epochs is not None:
                kw["num_train_epochs"] = self.warmup_num_train_epochs
        return SFTConfig(**kw)
