"""Stage 1, itemic alignment: token warm-up, then multi-task integration, each an ``SFTTrainer`` run.

    python -m think_rec.finetune.align --config finetune/configs/align_tiny.yaml
    accelerate launch -m think_rec.finetune.align --config finetune/configs/align_multitask.yaml

Each phase writes ``output_dir/<phase>/`` (checkpoints, ``log_history.json``) and resumes from its last
checkpoint when rerun; ``warmup/merged/`` feeds the next phase and the last one merges into ``output_dir/final``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTTrainer, TrlParser

from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.adapters import make_trainable, merge_and_save, warmup_only
from think_rec.model.itemic_tokens import add_sid_tokens
from think_rec.model.loading import load_model

from .align_data import PAPER_MIX, build_align_dataset
from .config import AlignConfig
from .cpu_patches import compact_fused_lm_head_on_cpu


class TimeBudget(TrainerCallback):
    """Stops training (saving a checkpoint first) once ``time.monotonic()`` passes ``deadline``."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline

    def on_step_end(self, args, state, control, **kwargs):
        if self.deadline is not None and time.monotonic() >= self.deadline:
            control.should_training_stop = True
            control.should_save = True
        return control


def _checkpoint_step(path: str | None) -> int:
    return int(Path(path).name.split("-")[-1]) if path else 0


def run_phase(config: AlignConfig, phase: str, base: str | Path, merged: Path, data: RecDataset,
              codebook: SIDCodebook, deadline: float | None) -> Path:
    """Train one phase from ``base``, merge it into ``merged`` and return that folder."""
    args = config.phase_args(phase)
    out = Path(args.output_dir)
    model, processor = load_model(str(base), quantization=config.quantization,
                                  gradient_checkpointing=config.gradient_checkpointing)
    tokenizer = getattr(processor, "tokenizer", processor)
    vocab = codebook.vocabulary()
    known = tokenizer.get_vocab()
    if any(t not in known for t in vocab):
        add_sid_tokens(model, processor, codebook, dict(zip(data.catalog.ids, data.catalog.items["title"])))
    new_ids = tokenizer.convert_tokens_to_ids(vocab)
    model = warmup_only(model, new_ids) if phase == "warmup" else make_trainable(
        model, new_ids, r=config.lora_r, alpha=config.lora_alpha)
    split = leave_one_out(data.interactions, max_history=config.max_history)
    mix = (config.warmup_task_mix if phase == "warmup" else None) or config.task_mix or PAPER_MIX
    train = build_align_dataset(data, codebook, split, mix, config.num_examples, seed=config.seed,
                                with_images=config.with_images, max_images=config.max_images,
                                image_root=config.data_dir)
    compact_fused_lm_head_on_cpu()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                         callbacks=[TimeBudget(deadline)])
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    if trainer.state.global_step == _checkpoint_step(last) and (merged / "config.json").exists():
        return merged  # nothing new was trained since the last merge
    if trainer.is_world_process_zero():
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        merge_and_save(trainer.model, processor, merged)
    trainer.accelerator.wait_for_everyone()
    return merged


def train_align(config: AlignConfig) -> Path:
    """Run the configured phase(s); returns ``output_dir/final`` (a merged, ``from_pretrained``-able model)."""
    for name in ("model", "data_dir", "sids_dir"):
        if not getattr(config, name):
            raise ValueError(f"AlignConfig.{name} is required")
    data = RecDataset.load(config.data_dir)
    codebook = SIDCodebook.load(config.sids_dir)
    start = time.monotonic()
    budget = None if config.time_budget_minutes is None else 60 * config.time_budget_minutes
    phases = ["warmup", "multitask"] if config.phase == "both" else [config.phase]
    base: str | Path = config.model
    for phase in phases:
        share = config.warmup_budget_fraction if phase == "warmup" and len(phases) == 2 else 1.0
        deadline = None if budget is None else start + share * budget
        merged = Path(config.output_dir) / ("final" if phase == phases[-1] else f"{phase}/merged")
        base = run_phase(config, phase, base, merged, data, codebook, deadline)
    return Path(base)


def main(argv: list[str] | None = None) -> Path:
    (config,) = TrlParser((AlignConfig,)).parse_args_and_config(argv)
    final = train_align(config)
    print(f"aligned model: {final}")
    return final


if __name__ == "__main__":
    main()
