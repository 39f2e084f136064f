"""Alignment/recommend templates: SID tokens, interleaved images, personas, captions."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from think_rec import prompts
from think_rec.itemic.codebook import SIDCodebook


def make_codebook(catalog) -> SIDCodebook:
    return SIDCodebook({i: (k % 8, (k // 8) % 8, k // 64) for k, i in enumerate(catalog.ids)}, [8, 8, 8])


@pytest.fixture(scope="module")
def shop(synthetic_dataset):
    return synthetic_dataset.catalog, make_codebook(synthetic_dataset.catalog)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, synthetic_dataset) -> Path:
    from think_rec.model.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", synthetic_dataset.catalog.texts(), seed=0)


def text_of(message) -> str:
    return "".join(p["text"] or "" for p in message["content"] if p["type"] == "text")


def test_sequential_interleaves_sids_titles_and_recent_images(shop):
    catalog, codebook = shop
    history, target = catalog.ids[:5], catalog.ids[7]
    ex = prompts.sequential_example(history, target, catalog, codebook, with_images=True, max_images=2)
    system, user, assistant = ex["messages"]
    assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]
    for item_id in history:
        assert f"{codebook.sid_string(item_id)} {catalog[item_id]['title']}" in text_of(user)
    assert text_of(assistant) == codebook.sid_string(target)
    kinds = [p["type"] for p in user["content"]]
    assert kinds.count("image") == len(ex["images"]) == 2
    assert ex["images"] == [catalog[i]["image"] for i in history[-2:]]
    assert all(Path(p).is_file() for p in ex["images"])
    # each image follows its own item's line
    before_first_image = text_of({"content": user["content"][: kinds.index("image")]})
    assert before_first_image.rstrip().endswith(catalog[history[3]]["title"])


def test_without_images_no_placeholders(shop):
    catalog, codebook = shop
    ex = prompts.sequential_example(catalog.ids[:3], catalog.ids[3], catalog, codebook, with_images=False)
    assert ex["images"] == [] and all(p["type"] == "text" for p in ex["messages"][1]["content"])


def test_persona_is_deterministic_and_built_from_attributes(shop):
    catalog, codebook = shop
    history = catalog.ids[:6]
    first = prompts.persona_example(history, catalog, codebook)
    again = prompts.persona_example(history, catalog, codebook)
    persona = text_of(first["messages"][-1])
    assert persona == text_of(again["messages"][-1])
    top_cat = max(sorted({catalog[i]["categories"][-1] for i in history}),
                  key=lambda c: sum(catalog[i]["categories"][-1] == c for i in history))
    assert top_cat in persona and catalog[history[0]]["brand"] in prompts.persona_text(history[:1], catalog)
    assert "$" in persona


def test_captioning_both_directions(shop):
    catalog, codebook = shop
    item = catalog.ids[10]
    sid2text = prompts.caption_example(item, "sid2text", catalog, codebook)["messages"]
    text2sid = prompts.caption_example(item, "text2sid", catalog, codebook)["messages"]
    assert codebook.sid_string(item) in text_of(sid2text[1])
    assert text_of(sid2text[2]).startswith(catalog[item]["title"])
    assert catalog[item]["title"] in text_of(text2sid[1]) and text_of(text2sid[2]) == codebook.sid_string(item)
    with pytest.raises(ValueError, match="direction"):
        prompts.caption_example(item, "both", catalog, codebook)


def test_general_examples_have_no_sids(shop):
    catalog, _ = shop
    n = len(prompts.load_templates()["tasks"]["general"])
    exs = [prompts.general_example(catalog.ids[0], k, catalog) for k in range(n)]
    assert all(ex is not None and "<|sid_begin|>" not in str(ex["messages"][1:]) for ex in exs)


def test_bad_template_file_names_missing_section(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: hi\n")
    with pytest.raises(ValueError, match=r"bad.yaml: history_item"):
        prompts.load_templates(bad)


def test_recommend_prompt_matches_training_prompt(shop, tiny_model):
    catalog, codebook = shop
    from think_rec.model.loading import load_model

    _, processor = load_model(str(tiny_model))
    history = catalog.ids[:4]
    rec = prompts.render_recommend_prompt(history, catalog, codebook, processor, max_images=3)
    train = prompts.sequential_example(history, catalog.ids[5], catalog, codebook, max_images=3)
    assert rec.messages == train["messages"][:-1] and rec.images == train["images"]
    full = processor.apply_chat_template(train["messages"], tokenize=False)
    assert full.startswith(rec.text)
    assert rec.text.count("<|image_pad|>") == 3 and codebook.sid_string(history[0]) in rec.text
    assert [Image.open(p).size for p in rec.images] == [(64, 64)] * 3
