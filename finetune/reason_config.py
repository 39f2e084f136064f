"""``ReasonConfig``: TRL's ``SFTConfig`` plus what stage 2 (reasoning activation) needs, read from YAML."""
from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .base_config import StageConfig, json_mapping
from .rationales import reject_secrets


@dataclass
class ReasonConfig(StageConfig, SFTConfig):
    """Stage 2: teacher rationales on pruned contexts, filtered, then LoRA SFT on the full history ->
    ``<think>rationale</think>`` + target SID, starting from the merged stage-1 model.
    ``time_budget_minutes`` counts training only, not rationale building."""

    teacher: str = field(default="template", metadata={"help": "template | self | openai | smol"})
    teacher_kwargs: dict | str | None = field(default=None, metadata={
        "help": "Teacher options, e.g. {base_url: http://gpu:8000/v1, model: Qwen/Qwen3-32B} for openai; no api_key: "
                "the key comes from OPENAI_API_KEY (or the variable named by api_key_env)."})
    teacher_retries: int = field(default=2, metadata={"help": "Times a failed teacher request is asked again."})
    max_teacher_failure_rate: float = field(default=0.05, metadata={
        "help": "Abort when more teacher requests than this share still fail (failed ones are never kept)."})
    prune_k: int = field(default=10, metadata={"help": "History items in the teacher's pruned context."})
    claim_support_top_n: int = field(default=0, metadata={
        "help": "Template teacher: claim only what one of the stage-1 prior's top N items for the history (the target "
                "left out) carries, so the model learns the claims its ranking can satisfy (0: every claim)."})
    rejection_top_n: int | None = field(default=10, metadata={
        "help": "Keep a rationale only if the model conditioned on it ranks the target in the top N (0/None: skip)."})
    rejection_num_beams: int | None = field(default=None, metadata={"help": "Beams of the rank check (default N)."})
    rejection_batch_size: int = field(default=16, metadata={"help": "Prompts per rank-check batch."})
    rationale_loss_weight: float = field(default=1.0, metadata={"help": "Loss weight of rationale tokens."})
    item_loss_weight: float = field(default=1.0, metadata={"help": "Loss weight of SID (item) tokens."})
    think_valid_users: int = field(default=2000, metadata={
        "help": "Valid users the served thinking ranking (think_ranking, follow_weight) is chosen on when training "
                "ends (0: keep stage 1's served.json as it is)."})
    think_max_tokens: int = field(default=64, metadata={"help": "Rationale length ceiling of that choice."})
    think_samples: int = field(default=1, metadata={
        "help": "Rationales drawn per request when served (the greedy one, then seeded samples): the page shows one "
                "that does not contradict itself and whose claims its first item satisfies (ClaimChecker.choose)."})
    think_min_gain_se: float = field(default=2.0, metadata={
        "help": "Rankings that follow the rationale and gain at least this many paired standard errors of valid "
                "NDCG@10 over the empty think's are preferred; of them (else of those not below it) the most "
                "faithful is served."})

    # SFTConfig defaults changed for this stage (rows come tokenised, with their own labels)
    gradient_checkpointing: bool = False
    save_steps: float = 100
    logging_steps: float = 5
    max_length: int | None = 2048  # rows are fitted by dropping their oldest history items, never truncated

    def __post_init__(self) -> None:
        self.teacher_kwargs = json_mapping(self.teacher_kwargs, "teacher_kwargs")
        reject_secrets(self.teacher_kwargs)
        if self.rationale_loss_weight < 0 or self.item_loss_weight < 0:
            raise ValueError("rationale_loss_weight and item_loss_weight must be >= 0")
        if not 0 <= self.max_teacher_failure_rate <= 1 or self.teacher_retries < 0:
            raise ValueError("max_teacher_failure_rate must be in [0, 1] and teacher_retries >= 0")
        if self.prune_k < 1:
            raise ValueError(f"prune_k must be >= 1, got {self.prune_k}")
        if self.claim_support_top_n < 0 or (self.claim_support_top_n and self.teacher != "template"):
            raise ValueError(f"claim_support_top_n={self.claim_support_top_n}: a count >= 0, read by the template "
                             f"teacher only (teacher: {self.teacher})")
        super().__post_init__()
