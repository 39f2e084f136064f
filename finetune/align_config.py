"""``AlignConfig``: TRL's ``SFTConfig`` plus what stage 1 (itemic alignment) needs, read from YAML."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from trl import SFTConfig

from .base_config import StageConfig, json_mapping, load_config

PHASES = ("warmup", "items", "sequence", "multitask")
STREAM_PHASES = ("items", "sequence")  # pre-tokenised item / SID streams, packed, no chat text or images
ALIASES = {"both": "warmup,multitask"}
PHASE_SELECTION_FIELDS = frozenset({"select_every_steps"})  # AlignConfig fields phase_overrides may set per phase


@dataclass
class AlignConfig(StageConfig, SFTConfig):
    """Itemic alignment, as a list of phases run in order, each from the previous one's merged weights:

    - ``warmup``: only the new SID rows of embed_tokens/lm_head train (pretrained bases);
    - ``items``: item-level warm start (needs ``item_head``): each user's training sequence as a stream of item
      tokens, one per item, trained with a softmax over the item tokens (SASRec-CE's objective in the LLM);
    - ``sequence``: itemic sequence pre-training, each user's training sequence as a bare SID stream with
      loss on every item after the first, packed without padding (``finetune/sequence_data.py``);
    - ``multitask``: the chat tasks of ``task_mix`` (the served prompt is the ``sequential`` task).

    ``max_steps``/``num_train_epochs``/``learning_rate`` etc. drive every phase; ``phase_overrides`` changes
    any ``SFTConfig`` field (and ``select_every_steps``) for one phase, and the warm-up has its own ``warmup_*``
    values (``-1``/``None`` = same as the others). ``select_every_steps`` > 0 turns on model selection on valid
    NDCG@10.
    """

    phase: str = field(default="both", metadata={
        "help": "Comma-separated phases among warmup, sequence, multitask ('both' = warmup,multitask)."})
    phase_overrides: dict | str | None = field(default=None, metadata={
        "help": "Per-phase SFTConfig fields (and select_every_steps), e.g. {sequence: {learning_rate: 3.0e-3, "
                "num_train_epochs: 30}}."})
    phase_budget: dict | str | None = field(default=None, metadata={
        "help": "Share of time_budget_minutes per phase, e.g. {sequence: 0.8, multitask: 0.2} (default: equal)."})
    sequence_max_items: int = field(default=50, metadata={"help": "Items per sequence pre-training window."})
    sequence_sid_softmax: bool = field(default=True, metadata={
        "help": "Sequence phase: softmax over the SID tokens only (every label is one; a much cheaper head)."})
    item_head: bool = field(default=False, metadata={
        "help": "Add one token per item whose lm_head row scores the next item over the whole catalog, trained "
                "beside the SID loss (item-level memory, finetune/item_head.py) and fused into the served ranking."})
    chat_history_loss: bool = field(default=False, metadata={
        "help": "Chat phase: supervise the SID of every history item after the first in the prompt too (as the "
                "sequence phase does), not only the answer (finetune/align_data.py supervise_history)."})
    item_inputs: bool = field(default=False, metadata={
        "help": "With item_head: history items are written with their item token after the SID, so the model reads "
                "an item-level embedding (tied to the item head's row) beside the codes; recorded in served.json."})
    history_titles: bool = field(default=True, metadata={
        "help": "Chat prompts write each history item as a numbered line with its title; false: its IDs alone, one "
                "item per line (the stream inside the chat turn); recorded in served.json."})
    sequence_item_streams: bool = field(default=False, metadata={
        "help": "Sequence phase: each training sequence also as an item-token stream (the items phase's rows), so "
                "the model keeps predicting the next item from one token per item beside the SID stream."})
    item_teacher: float = field(default=0.0, metadata={
        "help": "Sequence and chat phases: share of each item label's target (the item head's, and the item streams' "
                "with sequence_item_streams) given to the items phase's model, reading the same sequence's earlier "
                "items as item tokens: its item-level memory distilled into the model that reads SIDs (needs phase "
                "items first and full item softmaxes)."})
    item_distill: float = field(default=0.0, metadata={
        "help": "Share of the item head's target given to the training split's successors of the previous item "
                "(a bigram teacher: prior distillation into the model, finetune/item_head.py)."})
    item_loss_weight: float = field(default=1.0, metadata={
        "help": "Weight of the item head's mean cross-entropy per item beside the SID loss's mean per token."})
    scaled_embeddings: bool = field(default=False, metadata={
        "help": "Full training (lora_r 0): the token embeddings are written at sqrt(hidden) x their scale when the SID "
                "tokens are added (the final norm divided by it) and trained at lr x sqrt(hidden), the final norm at "
                "lr / sqrt(hidden): SASRec's and Gemma's inputs multiplied by sqrt(hidden), with standard weights "
                "(finetune/scaled_embeddings.py)."})
    select_every_steps: int = field(default=0, metadata={
        "help": "Valid NDCG@10 every N steps; the best weights of each phase are kept (0: off)."})
    select_users: int = field(default=500, metadata={"help": "Seeded sample of valid users for model selection."})
    select_num_beams: int = field(default=20, metadata={"help": "Beam width of the model-selection search."})
    select_patience: int = field(default=0, metadata={
        "help": "Stop a phase after this many evaluations without a better valid score (0: never)."})
    heldout_share: float = field(default=0.0, metadata={
        "help": "Share of users whose last training item stage 1 withholds; model selection and the served fusion's "
                "weights are chosen on their valid items (histories shaped like test: the last item never trained as "
                "the user's context). 0, or fewer held-out users than select_users: every valid user (in sample)."})
    exclude_history: bool | None = field(default=None, metadata={
        "help": "Never recommend history items, in model selection and when served (default: decided from "
                "train + valid, think_rec.data.split.history_exclusion)."})
    prior_valid_users: int = field(default=2000, metadata={
        "help": "Valid users that choose the collaborative prior's weight when the chat phase ends (0: no prior)."})
    served_num_beams: int = field(default=30, metadata={
        "help": "Beam width of the served ranking (recorded in final/served.json)."})
    task_mix: dict | str | None = field(default=None, metadata={
        "help": "Task fractions, e.g. {persona: 0.24, sequential: 0.66, captioning: 0.05, general: 0.05}."})
    warmup_task_mix: dict | str | None = field(default=None, metadata={"help": "Warm-up mix (default: task_mix)."})
    with_images: bool = field(default=True, metadata={"help": "Interleave item images into histories."})
    max_images: int = field(default=4, metadata={"help": "Images per prompt (the most recent items)."})
    warmup_max_steps: int = field(default=-1, metadata={"help": "Warm-up steps (-1: same as max_steps)."})
    warmup_num_train_epochs: float | None = field(default=None, metadata={"help": "Warm-up epochs."})
    warmup_learning_rate: float = field(default=1e-3, metadata={"help": "Warm-up lr (new rows only)."})
    model_dropout: float = field(default=0.0, metadata={
        "help": "Dropout on embeddings, attention and residual branches while training (models from scratch)."})
    items_dropout: float | None = field(default=None, metadata={
        "help": "model_dropout of the items phase (default: model_dropout)."})
    sampled_item_negatives: int = field(default=0, metadata={
        "help": "Every item-token softmax in training (the items phase, the sequence phase's item streams, the item "
                "head): 0 over the whole catalog; N > 0 each label against N item tokens drawn uniformly each step "
                "(sampled softmax: a step costs a fraction on large catalogs)."})
    quantization: str | None = field(default=None, metadata={"help": "None | 4bit | 8bit (QLoRA)."})
    lr_decay_share: float = field(default=0.0, metadata={
        "help": "With a time budget: the last share of each phase's time decays the learning rate linearly to 0 "
                "(warmup-stable-decay: a step-based schedule cannot know where a time budget ends)."})

    # SFTConfig defaults changed for this stage
    assistant_only_loss: bool = True
    gradient_checkpointing: bool = False
    save_steps: float = 100
    logging_steps: float = 5
    max_length: int | None = 2048
    include_num_input_tokens_seen: str = "non_padding"  # compute per phase, logged by model selection
    # (the padding-free sequence phase counts "all": its batches hold no pads)

    def __post_init__(self) -> None:
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown or not self.phases:
            raise ValueError(f"phase: expected a comma-separated list of {PHASES}, got {self.phase!r}")
        if not 0.0 <= self.heldout_share < 1.0:
            raise ValueError(f"heldout_share: expected a share in [0, 1), got {self.heldout_share!r}")
        if not 0.0 <= self.lr_decay_share <= 1.0:
            raise ValueError(f"lr_decay_share: expected a share in [0, 1], got {self.lr_decay_share!r}")
        if self.quantization not in (None, "4bit", "8bit"):
            raise ValueError(f"quantization: expected None, '4bit' or '8bit', got {self.quantization!r}")
        if self.chat_history_loss and self.with_images:
            raise ValueError("chat_history_loss: true needs with_images: false (its rows are tokenised text)")
        if "items" in self.phases and not self.item_head:
            raise ValueError("phase items needs item_head: true (the item tokens it trains)")
        if self.sequence_item_streams and not self.item_head:
            raise ValueError("sequence_item_streams: true needs item_head: true (the item tokens it streams)")
        if not 0.0 <= self.item_teacher <= 1.0:
            raise ValueError(f"item_teacher: expected a share in [0, 1], got {self.item_teacher!r}")
        if self.item_teacher and self.phases[0] != "items":
            raise ValueError(f"item_teacher needs the items phase first (its model teaches), got phase {self.phase!r}")
        if self.item_teacher and (self.sampled_item_negatives or self.item_distill):
            raise ValueError("item_teacher needs sampled_item_negatives: 0 and item_distill: 0 (its full distribution "
                             "is the soft target)")
        if self.item_inputs and not self.item_head:
            raise ValueError("item_inputs: true needs item_head: true (the item tokens it writes)")
        if self.scaled_embeddings and self.lora_r:
            raise ValueError(f"scaled_embeddings: true needs full training (lora_r: 0), got lora_r {self.lora_r}: "
                             "LoRA leaves the embeddings it would scale untrained")
        if self.sampled_item_negatives < 0:
            raise ValueError(f"sampled_item_negatives: expected 0 (full softmax) or N > 0, got "
                             f"{self.sampled_item_negatives!r}")
        self.task_mix = json_mapping(self.task_mix, "task_mix")
        self.warmup_task_mix = json_mapping(self.warmup_task_mix, "warmup_task_mix")
        self.phase_overrides = json_mapping(self.phase_overrides, "phase_overrides") or {}
        self.phase_budget = json_mapping(self.phase_budget, "phase_budget")
        for name in (*self.phase_overrides, *(self.phase_budget or {})):
            if name not in PHASES:
                raise ValueError(f"phase_overrides/phase_budget: {name!r} is not a phase; phases: {PHASES}")
        sft_fields = {f.name for f in fields(SFTConfig) if f.init}
        for name, overrides in self.phase_overrides.items():
            bad = set(overrides) - sft_fields - PHASE_SELECTION_FIELDS
            if bad:
                raise ValueError(f"phase_overrides.{name}: {sorted(bad)[0]!r} is not an SFTConfig field or "
                                 f"one of {sorted(PHASE_SELECTION_FIELDS)}")
        super().__post_init__()

    @property
    def phases(self) -> list[str]:
        return [p.strip() for p in ALIASES.get(self.phase, self.phase).split(",") if p.strip()]

    def budget_share(self, phase: str) -> float:
        """Share of the time budget for ``phase``."""
        if not self.phase_budget:
            return 1.0 / len(self.phases)
        shares = {p: self.phase_budget.get(p, 0.0) for p in self.phases}
        return shares[phase] / sum(shares.values()) if sum(shares.values()) else 1.0 / len(self.phases)

    def phase_args(self, phase: str) -> SFTConfig:
        """Plain ``SFTConfig`` for one phase, writing to ``output_dir/<phase>``."""
        kw: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(SFTConfig) if f.init}
        kw["output_dir"] = str(Path(self.output_dir) / phase)
        if phase in STREAM_PHASES:  # loss on the completion mask, packed, no pads
            kw.update(assistant_only_loss=False, completion_only_loss=True, packing=True,
                      packing_strategy="bfd", padding_free=True,
                      include_num_input_tokens_seen="all" if kw["include_num_input_tokens_seen"] != "no" else "no",
                      max_length=max(kw["max_length"] or 0, 8 * self.sequence_max_items))
        if phase == "multitask" and self.chat_history_loss:  # pre-tokenized: loss on the completion mask
            kw.update(assistant_only_loss=False, completion_only_loss=True)
        if phase == "warmup":
            kw["learning_rate"] = self.warmup_learning_rate
            if self.warmup_max_steps != -1:
                kw["max_steps"] = self.warmup_max_steps
            if self.warmup_num_train_epochs is not None:
                kw["num_train_epochs"] = self.warmup_num_train_epochs
        kw.update({k: v for k, v in self.phase_overrides.get(phase, {}).items() if k not in PHASE_SELECTION_FIELDS})
        return SFTConfig(**kw)

    def select_every(self, phase: str) -> int:
        """Steps between ``phase``'s valid evaluations (its ``phase_overrides`` first; 0: no selection)."""
        return int(self.phase_overrides.get(phase, {}).get("select_every_steps", self.select_every_steps))


def load_align_config(path: str | Path, **overrides: Any) -> AlignConfig:
    """``AlignConfig`` from a YAML recipe with ``overrides`` on top."""
    return load_config(AlignConfig, path, **overrides)
