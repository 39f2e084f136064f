"""Scaled embeddings written into the weights (``scale_embeddings``) + scaled learning rates (``scale_embedding_lr``)
train as inputs multiplied by sqrt(hidden) at every forward, and the model stays a standard one; stage 1 applies both
once (``scaled_embeddings``)."""
from __future__ import annotations

import copy

import pytest
import torch

from think_rec.finetune.align_config import AlignConfig
from think_rec.finetune.scaled_embeddings import scale_embedding_lr, scale_embeddings
from think_rec.model.loading import auto_model_class
from think_rec.model.tiny import tiny_config
from think_rec.model.tokenizer import TEXT_CHAT_TEMPLATE, train_tokenizer


@pytest.fixture()
def pair():
    tok = train_tokenizer(["red pen blue ink green paper"] * 20, 300, TEXT_CHAT_TEMPLATE)
    config = tiny_config("qwen3", tok)
    torch.manual_seed(0)
    multiplied = auto_model_class(config).from_config(config, dtype=torch.float32)
    written = copy.deepcopy(multiplied)
    scale_embeddings(written)
    return multiplied, written, config.hidden_size ** 0.5


def logits(model, ids, scale=1.0):
    embeds = model.get_input_embeddings()(ids) * scale
    return model(inputs_embeds=embeds).logits


def test_written_scale_is_the_multiplied_forward(pair):
    multiplied, written, scale = pair
    ids = torch.randint(0, 300, (2, 7))
    assert torch.allclose(logits(written, ids), logits(multiplied, ids, scale), atol=1e-5)
    assert written.get_input_embeddings().weight.std() > 5 * multiplied.get_input_embeddings().weight.std()


def test_scaled_lr_trains_as_the_multiplied_form(pair):
    multiplied, written, scale = pair
    plain = copy.deepcopy(written)  # the written form at one lr: trains differently
    ids = torch.randint(0, 300, (4, 9))
    # eps 0: Adam's eps is the one difference (it meets gradients s times smaller in the written form); every row has
    # a gradient here (full softmax over the tied rows), so no 0 / 0
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2, eps=0.0) for m in (multiplied, written, plain)]
    assert scale_embedding_lr(optimizers[1], written) == pytest.approx(scale)
    assert sorted(g["lr"] for g in optimizers[1].param_groups) == pytest.approx([1e-2 / scale, 1e-2, 1e-2 * scale])
    for _ in range(3):
        for model, opt, s in zip((multiplied, written, plain), optimizers, (scale, 1.0, 1.0)):
            out = logits(model, ids[:, :-1], s)
            loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    target = logits(multiplied, ids, scale)
    assert torch.allclose(logits(written, ids), target, atol=1e-4)
    assert not torch.allclose(logits(plain, ids), target, atol=1e-2)


def test_a_frozen_embedding_is_an_error(pair):
    _, written, _ = pair
    written.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in written.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(ValueError, match="scaled_embeddings"):
        scale_embedding_lr(opt, written)


def test_scaled_embeddings_with_lora_is_a_config_error():
    with pytest.raises(ValueError, match="scaled_embeddings: true needs full training"):
        AlignConfig(output_dir="x", lora_r=8, scaled_embeddings=True)
    assert AlignConfig(output_dir="x", lora_r=0, scaled_embeddings=True).scaled_embeddings


def test_stage1_writes_the_scale_once_and_keeps_it(synthetic_dataset, tmp_path):
    """Two full-training phases with ``scaled_embeddings``: the base's rows are scaled once (not again in the second
    phase), and the merged model carries them as standard weights."""
    from think_rec.finetune.align import train_align
    from think_rec.model.loading import load_model
    from think_rec.pipeline import RunDirs, ensure_sids, ensure_tiny

    dirs = RunDirs(tmp_path)
    synthetic_dataset.save(dirs.data)
    ensure_sids(dirs, synthetic_dataset, encoder="text", codebook_size=8, levels=2)
    ensure_tiny(dirs, synthetic_dataset)
    config = AlignConfig(output_dir=str(dirs.align), model=str(dirs.tiny), data_dir=str(dirs.data),
                         sids_dir=str(dirs.sids), phase="sequence,multitask", task_mix={"sequential": 1.0},
                         with_images=False, max_history=5, lora_r=0, scaled_embeddings=True, max_steps=2,
                         num_examples=64, learning_rate=1e-4, per_device_train_batch_size=8, prior_valid_users=0,
                         save_steps=1000, disable_tqdm=True)
    base, _ = load_model(str(dirs.tiny))
    final, _ = load_model(str(train_align(config)))
    rows = base.get_input_embeddings().weight.shape[0]
    ratio = (final.get_input_embeddings().weight[:rows].std() / base.get_input_embeddings().weight.std()).item()
    assert ratio == pytest.approx(128 ** 0.5, rel=0.05)
    assert final.get_decoder().norm.weight.mean().item() == pytest.approx(128 ** -0.5, rel=0.05)
