"""Stage 1, itemic alignment: phases (token warm-up, item-token warm start, itemic sequence pre-training, multi-task
chat), each an ``SFTTrainer`` run.

    python -m think_rec.finetune.align --config finetune/configs/rec_tiny.yaml
    accelerate launch -m think_rec.finetune.align --config finetune/configs/align_multitask.yaml

Each phase writes ``output_dir/<phase>/`` (checkpoints, ``log_history.json``) and resumes from its last complete
checkpoint when rerun with the same config, data, SIDs and base (``run_state.py``; ``--overwrite true`` starts
over); ``<phase>/merged/`` feeds the next phase and the last one merges into ``output_dir/final``. When the last
phase trained the chat prompt, ``final/`` also gets the served artefact (``served.py``: the collaborative prior,
its weight chosen on valid users, and ``served.json``).
With ``select_every_steps`` each phase after the warm-up keeps its best weights by valid NDCG@10
(``<phase>/selection.json``).
"""
from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import datasets
import torch
from transformers import Trainer, TrainerCallback
from trl import SFTTrainer, TrlParser

from think_rec.data.schema import RecDataset, column
from think_rec.data.split import LeaveOneOut, history_exclusion, hold_out, leave_one_out
from think_rec.decoding.prior import MarkovModel
from think_rec.decoding.trie import SIDTrie
from think_rec.itemic.codebook import SIDCodebook
from think_rec.model.adapters import make_trainable, warmup_only
from think_rec.model.dropout import add_dropout
from think_rec.model.itemic_tokens import add_item_tokens, add_sid_tokens
from think_rec.model.loading import load_model, require_vision
from think_rec.prompts import render_recommend_prompt

from .align_config import AlignConfig, PHASES, STREAM_PHASES
from .align_data import PAPER_MIX, build_align_dataset, supervise_history
from .cpu_patches import compact_fused_lm_head_on_cpu
from .item_head import ItemHeadLoss
from .label_softmax import distilled_cross_entropy, group_cross_entropy, group_logits
from .run_state import (config_fingerprint, data_fingerprint, model_fingerprint, resume_point, sids_fingerprint,
                        train_and_merge)
from .scaled_embeddings import scale_embedding_lr, scale_embeddings
from .selection import ValidSelection, next_item_ndcg10, valid_ndcg10
from .served import write_served
from .sequence_data import build_sequence_dataset, item_stream_ids, item_token_ids, sid_stream


class TimeBudget(TrainerCallback):
    """Stops training (saving a checkpoint and evaluating, if the run evaluates, first) once ``time.monotonic()``
    passes ``deadline``; over the last ``decay_share`` of the time from the start of training to ``deadline`` the
    learning rate the scheduler sets is scaled down linearly to 0 (warmup-stable-decay on the clock)."""

    def __init__(self, deadline: float | None, decay_share: float = 0.0):
        self.deadline, self.decay_share, self.start = deadline, decay_share, None

    def lr_scale(self, now: float) -> float:
        if self.deadline is None or not self.decay_share or self.start is None:
            return 1.0
        left = (self.deadline - now) / max(self.deadline - self.start, 1e-9)
        return min(1.0, max(0.0, left) / self.decay_share)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        scale = self.lr_scale(time.monotonic())
        if scale < 1.0 and optimizer is not None and lr_scheduler is not None:
            for group, lr in zip(optimizer.param_groups, lr_scheduler.get_last_lr()):
                group["lr"] = lr * scale

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "learning_rate" in logs:
            logs["learning_rate"] *= self.lr_scale(time.monotonic())

    def on_step_end(self, args, state, control, **kwargs):
        if self.deadline is not None and time.monotonic() >= self.deadline:
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"  # the last step is measured too
        return control


class RecTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss adds the item-level head's (``item_head.py``) when the model has item tokens."""

    def __init__(self, *args, item_head: dict[str, Any] | None = None, scaled_embedding_lr: bool = False, **kwargs):
        super().__init__(*args, **kwargs)  # item_head: ItemHeadLoss's keyword arguments
        self.item_head = None if item_head is None else ItemHeadLoss(self.model, **item_head)
        self.scaled_embedding_lr = scaled_embedding_lr

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.scaled_embedding_lr:
            scale_embedding_lr(optimizer, self.model)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.item_head is None:
            return self.rec_loss(model, inputs, return_outputs, num_items_in_batch)
        ids, labels = inputs["input_ids"], inputs["labels"]
        out = self.rec_loss(model, inputs, return_outputs, num_items_in_batch)
        tokens = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != -100).sum()
        item_loss = self.item_head(ids, labels, tokens, inputs.get("position_ids"))
        return (out[0] + item_loss, out[1]) if return_outputs else out + item_loss

    def rec_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class SequenceTrainer(RecTrainer):
    """``RecTrainer`` for packed SID (or item-token) streams. Nearly every position is labelled, so TRL's fused
    LM-head path (built for sparse labels, plus per-token metrics) only adds work; the loss is the causal-LM
    cross-entropy, over the whole vocabulary or, with ``label_groups`` ``(token ids, N)``, each label against the
    tokens of its own group (the SID tokens, or the item tokens: what decoding normalises over, at a fraction of
    the full head's cost), against N of them drawn uniformly where 0 < N < the group's size (``sampled_logits``).
    With ``item_teacher`` ``(model, item token ids, share)`` each item label takes a share of its target from that
    model's distribution over the item tokens at the same position (the items phase's selected weights: the phase
    keeps their item memory instead of re-fitting the item streams); labels in a sampled group stay hard.
    The forward runs without a KV cache: transformers finds the packed sequences' boundaries in ``position_ids``
    only then."""

    def __init__(self, *args, label_groups: list[tuple[list[int], int]] | None = None,
                 item_teacher: tuple[torch.nn.Module, list[int], float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_groups = [(torch.tensor(sorted(g)), n) for g, n in label_groups] if label_groups else None
        if item_teacher is not None and self.label_groups is None:
            raise ValueError("item_teacher needs label_groups (the item tokens' softmax)")
        self.item_teacher = None
        if item_teacher is not None:
            teacher, ids, share = item_teacher
            self.item_teacher = (teacher.eval().requires_grad_(False), torch.tensor(sorted(ids)), share)

    def rec_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**inputs, "use_cache": False}
        if self.label_groups is None:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")[:, 1:]
        outputs = model(**inputs, output_hidden_states=True, logits_to_keep=1)
        keep = labels != -100
        hidden, target = outputs.hidden_states[-1][:, :-1][keep], labels[keep]
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        teacher_hidden = self.teacher_hidden(inputs, keep, target)
        loss, scored = hidden.sum() * 0.0, 0
        for ids, negatives in self.label_groups:
            ids = ids.to(hidden.device)
            mine = torch.isin(target, ids)
            if mine.any() and teacher_hidden is not None and not 0 < negatives < len(ids):
                loss = loss + self.distilled_loss(hidden[mine], head, ids, target[mine], teacher_hidden[mine])
            elif mine.any():
                loss = loss + group_cross_entropy(hidden[mine], head, ids, target[mine], negatives)
            scored += int(mine.sum())
        if scored != len(target):
            raise ValueError(f"{len(target) - scored} labels are in no label group (the SID or the item tokens)")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum())
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def teacher_hidden(self, inputs: dict, keep: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """The item teacher's last hidden states at the labelled positions (None: no teacher or no item label)."""
        if self.item_teacher is None or not torch.isin(target, self.item_teacher[1].to(target.device)).any():
            return None
        teacher = self.item_teacher[0].to(target.device)
        return teacher(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1][:, :-1][keep]

    def distilled_loss(self, hidden: torch.Tensor, head: torch.nn.Module, ids: torch.Tensor, target: torch.Tensor,
                       teacher_hidden: torch.Tensor) -> torch.Tensor:
        """``group_cross_entropy`` over the whole group, each item label softened by the item teacher."""
        teacher, item_ids, share = self.item_teacher
        item_ids = item_ids.to(hidden.device)
        taught = torch.isin(target, item_ids)
        probs = group_logits(teacher_hidden[taught], teacher.get_output_embeddings(), item_ids).float().softmax(-1)
        return distilled_cross_entropy(group_logits(hidden, head, ids), torch.searchsorted(ids, target), taught,
                                       probs, torch.searchsorted(ids, item_ids), share)


def phase_prompt(phase: str, data: RecDataset, codebook: SIDCodebook, processor,
                 max_history: int) -> Callable[[list[str]], list[int]]:
    """History -> prompt token ids in the phase's format: the bare SID stream or the served chat prompt."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if phase == "sequence":
        ids = item_token_ids(codebook, tokenizer)
        return lambda history: sid_stream(history[-max_history:], ids)
    items = data.catalog.by_id
    return lambda history: tokenizer(render_recommend_prompt(history[-max_history:], items, codebook, processor,
                                                             with_images=False).text)["input_ids"]


def _selection(config: AlignConfig, phase: str, split, data: RecDataset, codebook: SIDCodebook, processor,
               out: Path) -> list[ValidSelection]:
    """Model selection on valid for one phase: the items phase by its item tokens' logits after the item stream,
    the others by trie beam search over their prompt format."""
    if not config.select_every(phase) or phase == "warmup":
        return []
    valid = split.selection_users(config.select_users, config.seed)
    histories, targets = valid["history"], valid["target"]
    history_len = config.sequence_max_items - 1 if phase in STREAM_PHASES else config.max_history
    exclude = history_exclusion(split) if config.exclude_history is None else config.exclude_history
    if phase == "items":
        tokenizer = getattr(processor, "tokenizer", processor)
        stream = item_stream_ids(codebook, tokenizer)
        score = partial(next_item_ndcg10, item_token_ids={i: ids[0] for i, ids in stream.items()},
                        prompt=lambda history: sid_stream(history[-history_len:], stream), histories=histories,
                        targets=targets, exclude_history=exclude)
    else:
        score = partial(valid_ndcg10, tokenizer=processor, trie=SIDTrie.from_codebook(codebook, processor),
                        prompt=phase_prompt(phase, data, codebook, processor, history_len), histories=histories,
                        targets=targets, num_beams=config.select_num_beams, exclude_history=exclude)
    out.mkdir(parents=True, exist_ok=True)
    return [ValidSelection(score, config.select_every(phase), patience=config.select_patience,
                           log_path=out / "selection.json")]


def stream_dataset(config: AlignConfig, phase: str, split, codebook: SIDCodebook, tokenizer,
                   item_ids: list[int]) -> datasets.Dataset:
    """A stream phase's rows: item-token streams (``items``), SID streams (``sequence``; with
    ``sequence_item_streams`` the item-token streams after them)."""
    def items() -> datasets.Dataset:
        return build_sequence_dataset(split, item_stream_ids(codebook, tokenizer), config.sequence_max_items)

    if phase == "items":
        return items()
    sids = build_sequence_dataset(split, item_token_ids(codebook, tokenizer), config.sequence_max_items,
                                  item_ids if codebook.item_inputs else ())
    return datasets.concatenate_datasets([sids, items()]) if config.sequence_item_streams else sids


def phase_fingerprint(config: AlignConfig, phase: str, base: str | Path, data: str, sids: str) -> dict:
    """What one phase's checkpoints depend on: its config (other phases' settings left out), data, SIDs, base."""
    cfg = config_fingerprint(config, phase=phase, phase_budget=None, phase_overrides=None,
                             select_every_steps=config.select_every(phase),
                             phase_args=config_fingerprint(config.phase_args(phase)))
    skip = (*(f"{p}_" for p in PHASES if p != phase), "warmup_max_steps", "warmup_num_train_epochs")
    shared = {"sequence_max_items"} if phase in STREAM_PHASES else set()  # both stream phases cut windows by it
    cfg = {k: v for k, v in cfg.items() if k in shared or not k.startswith(skip)}
    return {"config": cfg, "data": data, "sids": sids, "base": model_fingerprint(base)}


def stage1_split(config: AlignConfig, data: RecDataset, max_history: int) -> LeaveOneOut:
    """The leave-one-out split stage 1 trains on: ``heldout_share`` of its users' last training items withheld (when
    that makes at least ``select_users`` users to select on)."""
    return hold_out(leave_one_out(data.interactions, max_history=max_history), config.heldout_share, config.seed,
                    min_users=config.select_users)


def run_phase(config: AlignConfig, phase: str, base: str | Path, merged: Path, data: RecDataset,
              codebook: SIDCodebook, deadline: float | None, fingerprint: dict) -> Path:
    """Train one phase from ``base``, merge it into ``merged`` and return that folder."""
    args = config.phase_args(phase)
    out = Path(args.output_dir)
    last = resume_point(args, fingerprint, overwrite=config.overwrite, outputs=[merged])
    model, processor = load_model(str(base), quantization=config.quantization,
                                  gradient_checkpointing=config.gradient_checkpointing)
    if config.with_images and phase not in STREAM_PHASES:
        require_vision(processor, f"stage-1 config with_images: true (phase {phase})")
    tokenizer = getattr(processor, "tokenizer", processor)
    vocab = codebook.vocabulary()
    known = tokenizer.get_vocab()
    if any(t not in known for t in vocab):  # the run's base model: its first phase
        if config.scaled_embeddings:
            scale_embeddings(model)
        add_sid_tokens(model, processor, codebook, dict(zip(data.catalog.ids, data.catalog.items["title"])))
    if config.item_head and codebook.item_tokens()[0] not in known:
        add_item_tokens(model, processor, codebook)
    item_ids = tokenizer.convert_tokens_to_ids(codebook.item_tokens()) if config.item_head else []
    new_ids = tokenizer.convert_tokens_to_ids(vocab) + item_ids
    model = warmup_only(model, new_ids) if phase == "warmup" else make_trainable(
        model, new_ids, r=config.lora_r, alpha=config.lora_alpha)
    dropout = config.items_dropout if phase == "items" and config.items_dropout is not None else config.model_dropout
    if dropout and phase != "warmup":
        add_dropout(model, dropout)
    if phase in STREAM_PHASES:
        split = stage1_split(config, data, config.sequence_max_items - 1)
        train = stream_dataset(config, phase, split, codebook, tokenizer, item_ids)
    else:
        split = stage1_split(config, data, config.max_history)
        mix = (config.warmup_task_mix if phase == "warmup" else None) or config.task_mix or PAPER_MIX
        train = build_align_dataset(data, codebook, split, mix, config.num_examples, seed=config.seed,
                                    with_images=config.with_images, max_images=config.max_images,
                                    image_root=config.data_dir)
        if phase == "multitask" and config.chat_history_loss:
            train = supervise_history(train, processor, SIDTrie.from_codebook(codebook, processor))
    compact_fused_lm_head_on_cpu()
    callbacks = [TimeBudget(deadline, config.lr_decay_share),
                 *_selection(config, phase, split, data, codebook, processor, out)]
    lr_groups = dict(scaled_embedding_lr=config.scaled_embeddings)
    if phase == "items":  # the labels are item tokens: their softmax is the item head's loss itself
        trainer = SequenceTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                                  callbacks=callbacks, label_groups=[(item_ids, config.sampled_item_negatives)],
                                  **lr_groups)
    else:
        teacher = MarkovModel(column(split.train, "item_ids")) if config.item_distill else None
        taught = None  # the items phase's model, teaching the item labels (item_teacher)
        if config.item_teacher:
            taught = load_model(str(Path(config.output_dir) / "items" / "merged"))[0]
        head = dict(item_head=dict(trie=SIDTrie.from_codebook(codebook, processor), weight=config.item_loss_weight,
                                   teacher=teacher, distill=config.item_distill,
                                   sampled_negatives=config.sampled_item_negatives,
                                   item_teacher=None if taught is None else (taught, config.item_teacher))
                    ) if config.item_head else {}
        if phase == "sequence":
            groups = sequence_label_groups(config, tokenizer.convert_tokens_to_ids(vocab), item_ids)
            streams = None if taught is None or not config.sequence_item_streams else (taught, item_ids,
                                                                                       config.item_teacher)
            trainer = SequenceTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                                      callbacks=callbacks, label_groups=groups, item_teacher=streams, **head,
                                      **lr_groups)
        else:
            trainer = RecTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                                 callbacks=callbacks, **head, **lr_groups)

    def write_logs(step: int) -> None:
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))

    return train_and_merge(trainer, processor, last, merged, fingerprint, write_logs)


def sequence_label_groups(config: AlignConfig, sid_ids: list[int],
                          item_ids: list[int]) -> list[tuple[list[int], int]] | None:
    """The sequence phase's ``SequenceTrainer.label_groups``: None (the whole vocabulary) without
    ``sequence_sid_softmax``; with item streams one softmax over the SID and item tokens, or, with
    ``sampled_item_negatives``, each label against its own kind's tokens (the items' sampled)."""
    if not config.sequence_sid_softmax:
        return None
    if not config.sequence_item_streams:
        return [(sid_ids, 0)]
    if config.sampled_item_negatives:
        return [(sid_ids, 0), (item_ids, config.sampled_item_negatives)]
    return [(sid_ids + item_ids, 0)]


def train_align(config: AlignConfig) -> Path:
    """Run the configured phase(s); returns ``output_dir/final`` (a merged, ``from_pretrained``-able model)."""
    config.require()
    if config.disable_tqdm:  # also the per-phase tokenising / packing bars of `datasets`
        datasets.disable_progress_bars()
    data = RecDataset.load(config.data_dir)
    codebook = SIDCodebook.load(config.sids_dir).with_item_inputs(config.item_inputs).with_history_titles(
        config.history_titles)
    start = time.monotonic()
    budget = None if config.time_budget_minutes is None else 60 * config.time_budget_minutes
    phases = config.phases
    base: str | Path = config.model
    spent = 0.0
    data_fp, sids_fp = data_fingerprint(config.data_dir), sids_fingerprint(config.sids_dir)
    for phase in phases:
        spent += config.budget_share(phase)
        deadline = None if budget is None else start + spent * budget
        merged = Path(config.output_dir) / ("final" if phase == phases[-1] else f"{phase}/merged")
        fingerprint = phase_fingerprint(config, phase, base, data_fp, sids_fp)
        base = run_phase(config, phase, base, merged, data, codebook, deadline, fingerprint)
    if phases[-1] == "multitask" and config.prior_valid_users:  # the chat prompt is trained: the served artefact
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed or torch.distributed.get_rank() == 0:
            write_served(base, config.data_dir, codebook, max_history=config.max_history,
                         num_beams=config.served_num_beams, valid_users=config.prior_valid_users,
                         exclude_history=config.exclude_history, item_inputs=config.item_inputs,
                         history_titles=config.history_titles, heldout_share=config.heldout_share,
                         heldout_min_users=config.select_users, seed=config.seed)
        if distributed:
            torch.distributed.barrier()
    return Path(base)


def main(argv: list[str] | None = None) -> Path:
    (config,) = TrlParser((AlignConfig,)).parse_args_and_config(argv)
    final = train_align(config)
    print(f"aligned model: {final}")
    return final


if __name__ == "__main__":
    main()
