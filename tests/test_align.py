"""Stage 1 (itemic alignment): task mix, assistant-only loss mask, training, merging and resuming."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState
from trl import SFTTrainer, TrlParser

from think_rec.data.split import leave_one_out
from think_rec.finetune import align
from think_rec.finetune.align_config import AlignConfig
from think_rec.finetune.align_data import PAPER_MIX, build_align_dataset, task_counts
from think_rec.finetune.reason_config import ReasonConfig
from think_rec.finetune.rl_config import RLConfig
from think_rec.itemic.codebook import SIDCodebook

CONFIGS = Path(__file__).resolve().parents[1] / "finetune" / "configs"


def make_codebook(catalog) -> SIDCodebook:
    return SIDCodebook({i: (k % 8, (k // 8) % 8, k // 64) for k, i in enumerate(catalog.ids)}, [8, 8, 8])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_dataset) -> Path:
    """Saved data, codebook and a tiny base model."""
    from think_rec.model.tiny import build_tiny

    root = tmp_path_factory.mktemp("align")
    synthetic_dataset.save(root / "data")
    make_codebook(synthetic_dataset.catalog).save(root / "sids")
    build_tiny(root / "tiny", synthetic_dataset.catalog.texts(), seed=0)
    return root


def config(root: Path, out: str, **kw) -> AlignConfig:
    base = dict(output_dir=str(root / out), model=str(root / "tiny"), data_dir=str(root / "data"),
                sids_dir=str(root / "sids"), num_examples=160, per_device_train_batch_size=4, max_history=5,
                max_images=2, learning_rate=3e-3, warmup_learning_rate=1e-2, lora_r=8, lora_alpha=16,
                logging_steps=2, save_steps=100, seed=0)
    return AlignConfig(**{**base, **kw})


def test_task_mix_proportions_are_honoured(synthetic_dataset):
    cb = make_codebook(synthetic_dataset.catalog)
    split = leave_one_out(synthetic_dataset.interactions, max_history=5)
    ds = build_align_dataset(synthetic_dataset, cb, split, PAPER_MIX, num_examples=100, with_images=False)
    assert Counter(ds["task"]) == {"persona": 24, "sequential": 66, "captioning": 5, "general": 5}
    assert "images" not in ds.column_names
    two = build_align_dataset(synthetic_dataset, cb, split, {"sequential": 1, "captioning": 3}, num_examples=10)
    assert Counter(two["task"]) == {"sequential": 3, "captioning": 7} or Counter(two["task"]) == {
        "sequential": 2, "captioning": 8}
    assert sum(task_counts({"persona": 1, "general": 2}, 7).values()) == 7
    with pytest.raises(ValueError, match="unknown task 'chat'"):
        task_counts({"chat": 1.0}, 10)


def test_dataset_is_seeded_and_carries_images(synthetic_dataset):
    cb = make_codebook(synthetic_dataset.catalog)
    split = leave_one_out(synthetic_dataset.interactions, max_history=5)
    a = build_align_dataset(synthetic_dataset, cb, split, num_examples=40, seed=1, max_images=2)
    b = build_align_dataset(synthetic_dataset, cb, split, num_examples=40, seed=1, max_images=2)
    c = build_align_dataset(synthetic_dataset, cb, split, num_examples=40, seed=2, max_images=2)
    assert a["messages"] == b["messages"] and a["messages"] != c["messages"]
    for row in a:
        placeholders = sum(p["type"] == "image" for m in row["messages"] for p in m["content"])
        assert placeholders == len(row["images"]) <= 2
        assert all(im.size == (64, 64) for im in row["images"])
    assert any(row["images"] for row in a)


def test_loss_mask_covers_only_the_target_sid(workdir, synthetic_dataset):
    from think_rec.model.itemic_tokens import add_sid_tokens
    from think_rec.model.loading import load_model

    cb = SIDCodebook.load(workdir / "sids")
    model, processor = load_model(str(workdir / "tiny"))
    add_sid_tokens(model, processor, cb, dict(zip(synthetic_dataset.catalog.ids, synthetic_dataset.catalog.texts())))
    split = leave_one_out(synthetic_dataset.interactions, max_history=5)
    ds = build_align_dataset(synthetic_dataset, cb, split, {"sequential": 1.0}, num_examples=4, max_images=2)
    cfg = config(workdir, "mask", per_device_train_batch_size=4)
    trainer = SFTTrainer(model=model, args=cfg.phase_args("multitask"), train_dataset=ds, processing_class=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "pixel_values" in batch
    tok = processor.tokenizer
    answers = Counter()
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        kept = ids[labels != -100]
        assert (labels[labels != -100] == kept).all()
        answers[tok.decode(kept, skip_special_tokens=False)] += 1
    targets = [m[-1]["content"][0]["text"] for m in ds["messages"]]
    expected = Counter(t + tok.eos_token for t in targets)
    assert Counter(a.rstrip("\n") for a in answers.elements()) == expected, answers
    n_sid = cb.levels + 2
    assert all(int((lab != -100).sum()) in (n_sid + 1, n_sid + 2) for lab in batch["labels"])


def test_train_align_learns_merges_and_loads(workdir):
    from think_rec.model.loading import load_model

    t0 = time.monotonic()
    final = align.train_align(config(workdir, "run", warmup_max_steps=10, max_steps=40))
    assert final == workdir / "run" / "final"
    model, processor = load_model(str(final))
    vocab = processor.tokenizer.get_vocab()
    assert all(t in vocab for t in SIDCodebook.load(workdir / "sids").vocabulary())
    assert model.get_input_embeddings().weight.shape[0] >= len(processor.tokenizer)
    assert "lora" not in " ".join(n for n, _ in model.named_parameters())
    losses = [h["loss"] for h in json.loads((workdir / "run" / "multitask" / "log_history.json").read_text())
              if "loss" in h]
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses
    base, base_processor = load_model(str(workdir / "tiny"))
    warm, _ = load_model(str(workdir / "run" / "warmup" / "merged"))
    n_old = len(base_processor.tokenizer)  # SID tokens take the ids from here on
    warm_sd, base_sd = warm.state_dict(), base.state_dict()
    for name, weight in base_sd.items():  # the warm-up trains only the new SID rows
        rows = "embed_tokens" in name or "lm_head" in name
        assert torch.equal(warm_sd[name][:n_old] if rows else warm_sd[name], weight[:n_old] if rows else weight), name
    print(f"train_align 10+40 steps: {time.monotonic() - t0:.1f}s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")


@pytest.fixture
def resumed(monkeypatch) -> list:
    """The ``resume_from_checkpoint`` of every stage-1 chat-phase ``RecTrainer.train`` call, in order."""
    calls = []

    class Spy(align.RecTrainer):
        def train(self, resume_from_checkpoint=None, **kw):
            calls.append(resume_from_checkpoint)
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kw)

    monkeypatch.setattr(align, "RecTrainer", Spy)
    return calls


def test_rerun_resumes_from_last_checkpoint(workdir, resumed):
    out = workdir / "resume" / "multitask"
    align.train_align(config(workdir, "resume", phase="multitask", max_steps=4, save_steps=4))
    assert resumed == [None] and (out / "checkpoint-4").is_dir()
    align.train_align(config(workdir, "resume", phase="multitask", max_steps=8, save_steps=4))
    assert Path(resumed[1]).name == "checkpoint-4"
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_time_budget_stops_saves_and_evaluates_if_the_run_does():
    control, plain = TrainerControl(), SimpleNamespace(eval_strategy="no")
    align.TimeBudget(time.monotonic() + 60).on_step_end(plain, TrainerState(), control)
    assert not control.should_training_stop
    align.TimeBudget(time.monotonic() - 1).on_step_end(plain, TrainerState(), control)
    assert control.should_training_stop and control.should_save and not control.should_evaluate
    control = TrainerControl()
    align.TimeBudget(time.monotonic() - 1).on_step_end(SimpleNamespace(eval_strategy="steps"), TrainerState(), control)
    assert control.should_training_stop and control.should_evaluate


def test_time_budget_anneals_the_lr_over_its_last_share():
    budget = align.TimeBudget(deadline=100.0, decay_share=0.25)
    budget.start = 0.0
    assert budget.lr_scale(50.0) == budget.lr_scale(75.0) == 1.0
    assert budget.lr_scale(87.5) == pytest.approx(0.5) and budget.lr_scale(120.0) == 0.0
    assert align.TimeBudget(deadline=100.0).lr_scale(99.0) == 1.0  # no decay share: the scheduler's lr
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    now = time.monotonic()
    budget = align.TimeBudget(deadline=now + 12.5, decay_share=0.25)
    budget.start = now - 87.5
    budget.on_pre_optimizer_step(None, TrainerState(), TrainerControl(), optimizer=optimizer, lr_scheduler=scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5, rel=0.05)
    logs = {"learning_rate": 0.1}
    budget.on_log(None, TrainerState(), TrainerControl(), logs=logs)
    assert logs["learning_rate"] == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("name", ["rec_tiny", "align_warmup", "align_multitask"])
def test_yaml_configs_parse(name):
    (cfg,) = TrlParser((AlignConfig,)).parse_args_and_config(["--config", str(CONFIGS / f"{name}.yaml")])
    assert cfg.phases in (["warmup"], ["warmup", "multitask"], ["items", "sequence", "multitask"])
    assert cfg.assistant_only_loss and cfg.report_to == []
    assert abs(sum(cfg.task_mix.values()) - 1) < 1e-9 and cfg.model and cfg.data_dir and cfg.sids_dir


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="phase"):
        AlignConfig(output_dir="x", phase="all")
    with pytest.raises(ValueError, match="task_mix"):
        AlignConfig(output_dir="x", task_mix="{oops")
    with pytest.raises(ValueError, match="heldout_share"):
        AlignConfig(output_dir="x", heldout_share=1.0)
    for cls in (AlignConfig, ReasonConfig, RLConfig):  # the stages' shared required fields, checked at train time
        with pytest.raises(ValueError, match=f"{cls.__name__}.sids_dir is required"):
            cls(output_dir="x", model="m", data_dir="d").require()


CHILD = """
import json, sys, time, traceback
from pathlib import Path
import transformers.modeling_utils as modeling_utils
from think_rec.finetune.align import train_align
from think_rec.finetune.align_config import AlignConfig

def stuck(*args, **kwargs):  # the merged model's weights: config.json is already written, the weights never are
    Path(sys.argv[1]).write_text("".join(traceback.format_stack()))
    time.sleep(600)

modeling_utils.safe_save_file = stuck
train_align(AlignConfig(**json.loads(sys.argv[2])))
"""


def test_kill_during_merge_leaves_nothing_a_rerun_trusts(workdir, tmp_path):
    from think_rec.model.loading import load_model

    # one 2-step epoch: a rerun trains 0 steps (with max_steps, transformers 5 runs one step past a finished run)
    kw = dict(phase="multitask", num_examples=8, num_train_epochs=1, max_steps=-1, save_steps=2, disable_tqdm=True)
    cfg = config(workdir, "killed", **kw)
    (tmp_path / "child.py").write_text(CHILD)
    marker = tmp_path / "saving"
    args = {k: getattr(cfg, k) for k in ("output_dir", "model", "data_dir", "sids_dir", "per_device_train_batch_size",
                                         "max_history", "max_images", "learning_rate", "lora_r", "lora_alpha", "seed",
                                         *kw)}
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(marker), json.dumps(args)])
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"the child never reached the merge (exit code {child.poll()})"
        time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert "merge_and_save" in marker.read_text()
    final, manifest = workdir / "killed" / "final", "think_rec_manifest.json"
    assert not (final / manifest).exists()
    assert align.train_align(cfg) == final  # the rerun resumes from checkpoint-2, trains 0 steps, merges again
    model, _ = load_model(final)  # a half-written folder taken as done would have no weights
    assert model.get_input_embeddings().weight.shape[0] > 0
    assert json.loads((final / manifest).read_text())["step"] == 2


def test_changed_run_refuses_to_resume_without_overwrite(workdir, resumed):
    from think_rec.finetune.run_state import MANIFEST, RunChanged

    out = workdir / "changed" / "multitask"
    kw = dict(phase="multitask", max_steps=2, save_steps=2, disable_tqdm=True)
    final = align.train_align(config(workdir, "changed", **kw))
    manifest = json.loads((final / MANIFEST).read_text())
    (out / "checkpoint-9").mkdir()  # a checkpoint killed before its weights: never resumed from
    (out / "checkpoint-9" / "trainer_state.json").write_text("{}")
    align.train_align(config(workdir, "changed", **{**kw, "max_steps": 3}))  # more steps: same run, resumes
    assert Path(resumed[1]).name == "checkpoint-2" and json.loads((final / MANIFEST).read_text())["step"] == 3
    with pytest.raises(RunChanged, match=r"changed since.*config\.learning_rate.*overwrite"):
        align.train_align(config(workdir, "changed", **kw, learning_rate=1e-3))
    assert len(resumed) == 2  # refused before training
    final = align.train_align(config(workdir, "changed", **kw, learning_rate=1e-3, overwrite=True))
    assert resumed[2] is None and not (out / "checkpoint-9").exists() and not (out / "checkpoint-3").exists()
    fresh = json.loads((final / MANIFEST).read_text())
    assert fresh["step"] == 2 and fresh["config"] != manifest["config"] and fresh["data"] == manifest["data"]
