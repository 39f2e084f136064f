"""``RLConfig``: TRL's ``GRPOConfig`` plus what stage 3 (reasoning enhancement) needs, read from YAML."""
from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .base_config import StageConfig, json_mapping
from .rl_rewards import REWARDS


@dataclass
class RLConfig(StageConfig, GRPOConfig):
    """Stage 3: GRPO on the stage-2 model. Each completion is a rationale; after ``</think>`` a trie beam search
    of width ``num_beams`` from the policy scores it (``finetune/rl_rewards.py``). The reference model is the
    stage-2 model (``beta`` > 0)."""

    num_beams: int = field(default=32, metadata={"help": "Beam width of the reward's rollout (K)."})
    rewards: dict | str | None = field(default=None, metadata={
        "help": f"Reward weights by name, from {list(REWARDS)}; default {{rollout_beam: 1, format: 1}}."})
    served_ranking: bool = field(default=False, metadata={
        "help": "The reward ranks as the model is served (its prior.json / served.json: prior, item head, history "
                "exclusion); false (default): the trie beams alone. The prior does not depend on the rationale: "
                "with it (weight chosen on valid) the GRPO test's policy did not move in 2 steps (rewards tie)."})
    eval_examples: int = field(default=0, metadata={
        "help": "Held-out prompts: a seeded sample of valid-split users, never GRPO prompts; with `eval_strategy: "
                "steps` TRL measures their mean reward every `eval_steps` (`eval_on_start` for step 0). 0: none."})
    prompt_split: str = field(default="train", metadata={
        "help": "Where GRPO's prompts come from: `train` (examples inside the training sequences, which stages 1-2 "
                "trained on: the reward is ~0.5 there against ~0.19 held out) or `valid` (each user's valid-split "
                "example, users of `eval_examples` left out: targets no stage trained on)."})

    # StageConfig and GRPOConfig defaults changed for this stage (OneRec-Think / MiniOneRec settings, CPU-sized
    # rationales)
    max_history: int = 10
    num_generations: int | None = 16
    beta: float = 0.001
    epsilon: float = 0.2
    max_completion_length: int | None = 48
    per_device_train_batch_size: int = 16
    learning_rate: float = 1e-5
    save_steps: float = 50
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
        super().__post_init__()
        if self.prompt_split not in ("train", "valid"):
            raise ValueError(f"prompt_split must be train or valid, got {self.prompt_split!r}")
