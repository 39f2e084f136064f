"""``StageConfig``: the fields every training stage's TRL config shares, their checks and CPU defaults, and
``load_config`` for the YAML recipes (``finetune/configs/*.yaml``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml

ConfigT = TypeVar("ConfigT")
REQUIRED = ("model", "data_dir", "sids_dir", "output_dir")


def json_mapping(value: dict | str | None, name: str) -> dict | None:
    """A config field given as a mapping or as its JSON text (the command line); ``ValueError`` naming ``name``."""
    if value is None or isinstance(value, dict):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: expected a JSON mapping like '{{\"key\": 1.0}}', got {value!r}") from e


@dataclass
class StageConfig:
    """Mixin placed before TRL's ``SFTConfig``/``GRPOConfig`` (``class XConfig(StageConfig, SFTConfig)``): every
    field has a default, so the dataclass field order works, and ``__post_init__`` chains to TRL's."""

    # inputs
    model: str = field(default="", metadata={
        "help": "Starting model: a folder, hub id or think_rec preset name (stage 1), else the previous stage's "
                "merged model folder (its output_dir/final)."})
    data_dir: str = field(default="", metadata={"help": "Prepared RecDataset folder."})
    sids_dir: str = field(default="", metadata={"help": "Folder holding sid_meta.json (and item_embeddings.npy)."})
    # examples
    max_history: int = field(default=20, metadata={"help": "History items per prompt (the latest)."})
    num_examples: int | None = field(default=None, metadata={
        "help": "Training examples (seeded sample; default: from data)."})
    # adapters
    lora_r: int = field(default=16, metadata={
        "help": "LoRA rank; 0 = full fine-tuning (the from-scratch tiny preset)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    # run control
    time_budget_minutes: float | None = field(default=None, metadata={
        "help": "Training stops (and checkpoints) when spent."})
    overwrite: bool = field(default=False, metadata={
        "help": "Start over: delete this stage's checkpoints and merged model(s) (a changed run otherwise stops)."})

    # TRL defaults changed for every stage
    report_to: None | str | list[str] = "none"
    save_total_limit: int | None = 2

    def __post_init__(self) -> None:
        if not torch.cuda.is_available():  # the CPU defaults of every stage: fp32 on the CPU
            self.use_cpu, self.bf16, self.fp16 = True, False, False
        super().__post_init__()  # type: ignore[misc]  # TRL's config, next in the MRO

    def require(self) -> None:
        """``ValueError`` naming the first empty field of ``REQUIRED`` (checked when training starts, so recipes
        and tests may build partial configs)."""
        for name in REQUIRED:
            if not getattr(self, name):
                raise ValueError(f"{type(self).__name__}.{name} is required")


def load_config(config_cls: type[ConfigT], path: str | Path, **overrides: Any) -> ConfigT:
    """A stage's config dataclass from a YAML recipe (``finetune/configs/*.yaml``) with ``overrides`` on top."""
    values = {**(yaml.safe_load(Path(path).read_text()) or {}), **overrides}
    unknown = set(values) - {f.name for f in fields(config_cls) if f.init}
    if unknown:
        raise ValueError(f"{path}: unknown field {sorted(unknown)[0]!r}")
    return config_cls(**values)
