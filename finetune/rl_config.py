"""``RLConfig``: TRL's ``GRPOConfig`` plus what stage 3 (reasoning enhancement) needs, read from YAML."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from .config import json_mapping
from .rl_rewards import REWARDS


@dataclass
class RLConfig(GRPOConfig):
    """Stage 3: GRPO on the stage-2 model. Each completion is a rationale; after ``</think>`` a trie beam search
    of width ``num_beams`` from the policy scores it (``finetune/rl_rewards.py``). The reference model is the
    stage-2 model (``beta`` > 0)."""

    model: str = field(default="", metadata={"help": "The merged stage-2 model folder (reason output_dir/final)."})
    data_dir: str = field(default="", metadata={"help": "Prepared RecDataset folder."})
    sids_dir: str = field(default="", metadata={"help": "Folder holding sid_meta.json."})
    max_history: int = field(default=10, metadata={"help": "History items in the prompt (the latest)."})
    num_examples: int | None = field(default=None, metadata={"help": "Training examples (seeded sample; default all)."})
    num_beams: int = field(default=32, metadata={"help": "Beam width of the reward's rollout (K)."})
    rewards: dict | str | None = field(default=None, metadata={
        "help": f"Reward weights by name, from {list(REWARDS)}; default {{rollout_beam: 1, format: 1}}."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (0: full training, for the tiny preset)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    time_budget_minutes: float | None = field(default=None, metadata={"help": "Stop (and checkpoint) when spent."})
    overwrite: bool = field(default=False, metadata={
        "help": "Start over: delete this run's checkpoints and final/ (needed when its config, data or model changed)."})

    # GRPOConfig defaults changed for this stage (OneRec-Think / MiniOneRec settings, CPU-sized rationales)
    num_generations: int | None = 16
    beta: float = 0.001
    epsilon: float = 0.2
    max_completion_length: int | None = 48
    per_device_train_batch_size: int = 16
    learning_rate: float = 1e-5
    report_to: None | str | list[str] = "none"
    save_steps: float = 50
    save_total_limit: int | None = 2
    logging_steps: float = 1

    def __post_init__(self) -> None:
        self.rewards = dict(json_mapping(self.rewards, "rewards") or {"rollout_beam": 1.0, "format": 1.0})
        unknown = [n for n in self.rewards if n not in REWARDS]
        if unknown or not self.rewards:
            raise ValueError(f"rewards: unknown reward {unknown[0]!r}; rewards: {list(REWARDS)}" if unknown
                             else "rewards: give at least one reward")
        if self.reward_weights is not None:
            raise ValueError("set the weights in `rewards` ({name: weight}), not reward_weights")
        self.reward_weights = [float(w) for w in self.rewards.values()]
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if not torch.cuda.is_available():
            self.use_cpu, self.bf16, self.fp16 = True, False, False
        super().__post_init__()
