"""Stage 2, reasoning activation: think-then-recommend SFT (LoRA) on top of the stage-1 model.

    python -m think_rec.finetune.reason --config finetune/configs/reason_tiny.yaml
    think-rec train reason --config finetune/configs/reason_tiny.yaml

``output_dir/rationales/`` holds the filtered rationales and their acceptance rate (built once, reused while the
teacher settings, ``prune_k``, data, SIDs and model are the same); training checkpoints go to ``output_dir/`` and
resume from the last complete one when the run is unchanged (``run_state.py``; ``--overwrite true`` starts
over); the merged model goes to ``output_dir/final``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from trl import SFTTrainer, TrlParser

from think_rec.data.schema import RecDataset
from think_rec.data.split import leave_one_out
from think_rec.decoding.prior import PRIOR_FILE, CollaborativePrior
from think_rec.decoding.think import THINK_CLOSE, THINK_OPEN
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.adapters import make_trainable
from think_rec.model.artefacts import SERVED_FILE, ServedConfig, model_codebook
from think_rec.model.loading import load_model

from .align import TimeBudget
from .cpu_patches import compact_fused_lm_head_on_cpu
from .rationales import TEACHER_VERSION, TRANSPORT, make_teacher
from .reason_config import ReasonConfig
from .reason_data import build_rationales, load_rows, sample_examples, save_rows, tokenize_rows
from .run_state import (config_fingerprint, data_fingerprint, digest, files_digest, model_fingerprint,
                        resume_point, sids_fingerprint, train_and_merge)
from .served import inherit_served, write_think

RATIONALE_FIELDS = ("teacher", "teacher_kwargs", "prune_k", "num_examples", "seed", "max_history", "rejection_top_n",
                    "rejection_num_beams", "claim_support_top_n")


class ReasonTrainer(SFTTrainer):
    """``SFTTrainer`` whose token loss weighs SID tokens by ``item_loss_weight`` and every other labelled
    token (the rationale and ``</think>``) by ``rationale_loss_weight``, normalised by the token count,
    so equal weights of 1 give TRL's loss exactly."""

    def __init__(self, *args, item_token_ids: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.item_token_ids = torch.tensor(sorted(item_token_ids), dtype=torch.long)

    def token_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """Per-token weights for next-token ``labels`` (0 where the label is -100)."""
        item = torch.isin(labels, self.item_token_ids.to(labels.device))
        weights = torch.where(item, self.args.item_loss_weight, self.args.rationale_loss_weight)
        return weights * (labels != -100)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.item_loss_weight == self.args.rationale_loss_weight == 1.0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        weights = self.token_weights(inputs["labels"][:, 1:]).to(outputs.log_probs.dtype)
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -(outputs.log_probs * weights).sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss


def reason_fingerprint(config: ReasonConfig) -> dict:
    """What the run depends on: config, data, SIDs, base model and (``rationales``) what its rationales do."""
    teacher_kwargs = {k: v for k, v in (config.teacher_kwargs or {}).items() if k not in TRANSPORT}
    cfg = config_fingerprint(config, teacher_kwargs=teacher_kwargs, teacher_retries=None,
                             max_teacher_failure_rate=None)
    inputs = {"data": data_fingerprint(config.data_dir), "sids": sids_fingerprint(config.sids_dir),
              "base": model_fingerprint(config.model)}
    candidates = {"prior": files_digest(config.model, [PRIOR_FILE])} if config.claim_support_top_n else {}
    rationales = digest({**{f: cfg[f] for f in RATIONALE_FIELDS}, **inputs, "teacher_version": TEACHER_VERSION,
                         **candidates})
    return {"config": cfg, **inputs, "rationales": rationales}


def prior_candidates(model_dir: str | Path, n: int) -> Callable[[Sequence[str], str], list[str]]:
    """``(history, target) ->`` the top ``n`` items of the collaborative prior saved beside the stage-1 model at
    ``model_dir``, never the target, nor a history item when the model is served excluding them."""
    prior = CollaborativePrior.load(model_dir)
    if prior is None:
        raise ValueError(f"{model_dir}: claim_support_top_n={n} reads the stage-1 model's collaborative prior, and "
                         "it has none (`think-rec prior` builds one)")
    exclude_history = ServedConfig.load(model_dir, warn=False).exclude_history
    return lambda history, target: prior.markov.rank(history, n, {target, *(history if exclude_history else ())})


def rationale_rows(config: ReasonConfig, data: RecDataset, codebook: SIDCodebook, model, processor, key: str):
    """Filtered rationale rows and stats, from ``output_dir/rationales`` when built there under the same ``key``."""
    folder = Path(config.output_dir) / "rationales"
    cached = load_rows(folder)
    if cached is not None and cached[1].get("key") == key:
        return cached
    split = leave_one_out(data.interactions, max_history=config.max_history)
    examples = sample_examples(split, codebook, config.num_examples, seed=config.seed)
    kwargs = dict(config.teacher_kwargs or {})
    if config.teacher == "self":
        kwargs.setdefault("model", model)
        kwargs.setdefault("processor", processor)
    teacher = make_teacher(config.teacher, **kwargs)
    candidates = prior_candidates(config.model, config.claim_support_top_n) if config.claim_support_top_n else None
    start = time.perf_counter()
    model.eval()
    rows, stats = build_rationales(examples, data, codebook, config.sids_dir, teacher, model=model,
                                   processor=processor, prune_k=config.prune_k, top_n=config.rejection_top_n,
                                   num_beams=config.rejection_num_beams, batch_size=config.rejection_batch_size,
                                   retries=config.teacher_retries, max_failure_rate=config.max_teacher_failure_rate,
                                   candidates=candidates)
    stats.update(teacher=config.teacher, key=key, seconds=round(time.perf_counter() - start, 1))
    save_rows(rows, stats, folder)
    return rows, stats


def train_reason(config: ReasonConfig) -> Path:
    """Build (or reuse) the rationales, train, merge; returns ``output_dir/final``."""
    config.require()
    data = RecDataset.load(config.data_dir)
    codebook = model_codebook(config.sids_dir, config.model)
    fingerprint = reason_fingerprint(config)
    out, final = Path(config.output_dir), Path(config.output_dir) / "final"
    last = resume_point(config, fingerprint, overwrite=config.overwrite, outputs=[final])
    model, processor = load_model(config.model, gradient_checkpointing=config.gradient_checkpointing)
    tokenizer = getattr(processor, "tokenizer", processor)
    known = tokenizer.get_vocab()
    missing = [t for t in [*codebook.vocabulary(), THINK_OPEN, THINK_CLOSE] if t not in known]
    if missing:
        raise ValueError(f"{config.model}: the tokenizer lacks {missing[0]!r}; train stage 1 (think-rec train "
                         "align) on this codebook first")
    rows, stats = rationale_rows(config, data, codebook, model, processor, fingerprint["rationales"])
    train = tokenize_rows(rows, data, codebook, processor, max_length=config.max_length)
    item_ids = tokenizer.convert_tokens_to_ids(codebook.vocabulary())
    think = tokenizer.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
    model.train()
    model = make_trainable(model, item_ids + think, r=config.lora_r, alpha=config.lora_alpha)
    compact_fused_lm_head_on_cpu()
    deadline = None if config.time_budget_minutes is None else time.monotonic() + 60 * config.time_budget_minutes
    trainer = ReasonTrainer(model=model, args=config, train_dataset=train, processing_class=processor,
                            callbacks=[TimeBudget(deadline)], item_token_ids=item_ids)

    def write_logs(step: int) -> None:
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        (out / "reason_stats.json").write_text(json.dumps({**stats, "steps": step}, indent=1))

    final = inherit_served(config.model, train_and_merge(trainer, processor, last, final, fingerprint, write_logs))
    if config.think_valid_users and (final / SERVED_FILE).is_file():
        write_think(final, config.data_dir, codebook, valid_users=config.think_valid_users,
                    max_think_tokens=config.think_max_tokens, min_gain_se=config.think_min_gain_se,
                    rationale_samples=config.think_samples, seed=config.seed)
    return final


def main(argv: list[str] | None = None) -> Path:
    (config,) = TrlParser((ReasonConfig,)).parse_args_and_config(argv)
    final = train_reason(config)
    print(f"reasoning model: {final}")
    return final


if __name__ == "__main__":
    main()
