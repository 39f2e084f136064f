"""Chat templates for the alignment tasks and the inference ``recommend`` prompt.

Templates are data (``prompts/align.yaml``, installed as package data of ``think_rec.prompt_templates``,
so a wheel install finds them); this module fills them from the catalog and codebook.
Every message ``content`` is a list of parts (``{"type": "text", "text": ...}`` or
``{"type": "image"}``); images come back separately, in placeholder order, as TRL and the
Qwen-VL processors expect.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .data.errors import DataError
from .data.images import IMAGE_SUFFIXES, resolve_image
from .data.schema import Catalog
from .itemic.codebook import SIDCodebook
from .model.loading import require_vision

Items = Catalog | Mapping[str, dict[str, Any]]  # anything with catalog[item_id] -> row

PROMPTS_DIR = Path(str(resources.files("think_rec.prompt_templates")))
TASKS = ("persona", "sequential", "captioning", "general", "steering", "category_items", "brand_items")
_REQUIRED = {"system", "history_item", "tasks", "persona"}


@functools.cache
def load_templates(path: str | Path = PROMPTS_DIR / "align.yaml") -> dict[str, Any]:
    """The template file, checked for its top-level keys."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    missing = _REQUIRED - set(data or {})
    if missing:
        raise DataError(str(path), None, sorted(missing)[0], "missing template section")
    return data


def image_path(item: dict[str, Any], image_root: str | Path | None = None) -> Path | None:
    """The item's local image file, or None (no image, a URL, or a missing file).

    With ``image_root`` (the prepared data folder) the path is resolved by ``resolve_image``, which
    raises ``DataError`` when it leaves that folder; without it only absolute image paths (as
    ``RecDataset.load`` returns them, already checked) are accepted.
    """
    img = item.get("image")
    if not img or "://" in img:
        return None
    if image_root is not None:
        p = resolve_image(image_root, img)
    else:
        p = Path(img)
        if not p.is_absolute() or p.suffix.lower() not in IMAGE_SUFFIXES:
            return None
    return p if p.is_file() else None


def _text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def _merge_text(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if p["type"] == "text" and out and out[-1]["type"] == "text":
            out[-1] = _text(out[-1]["text"] + p["text"])
        elif p["type"] != "text" or p["text"]:
            out.append(p)
    return out


def _user_with_history(template: str, history: Sequence[str], catalog: Items, codebook: SIDCodebook,
                       with_images: bool, max_images: int, image_root: str | Path | None,
                       tpl: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Parts for a user turn whose ``{history}`` interleaves item lines and (recent) item images; a line is
    ``history_item`` (number, IDs, title), or the IDs alone for a codebook without ``history_titles``."""
    before, _, after = template.partition("{history}")
    parts, images = [_text(before)], []
    first_image = len(history) - max_images  # only the most recent items carry pictures
    for n, item_id in enumerate(history):
        item = catalog[item_id]
        line = tpl["history_item"].format(n=n + 1, sid=codebook.history_string(item_id), title=item["title"]) \
            if codebook.history_titles else codebook.history_string(item_id)
        parts.append(_text(line.rstrip()))  # no dangling space for an item without a title
        img = image_path(item, image_root) if with_images and n >= first_image else None
        if img is not None:
            parts.append({"type": "image"})
            images.append(str(img))
        parts.append(_text("\n" if n < len(history) - 1 else ""))
    parts.append(_text(after))
    return _merge_text(parts), images


def _chat(user: list[dict[str, Any]], assistant: str | None, tpl: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = [{"role": "system", "content": [_text(tpl["system"])]}, {"role": "user", "content": user}]
    if assistant is not None:
        msgs.append({"role": "assistant", "content": [_text(assistant)]})
    return msgs


def persona_text(history: Sequence[str], catalog: Items, templates: dict[str, Any] | None = None) -> str:
    """A deterministic user persona from the history's categories, brands, prices and latest items."""
    t = (templates or load_templates())["persona"]
    items = [catalog[i] for i in history]
    cats = Counter(c for it in items for c in it["categories"][-1:])
    brands = Counter(it["brand"] for it in items if it["brand"])
    prices = sorted(it["price"] for it in items if it["price"] is not None)

    def top(counter: Counter, k: int) -> str:
        names = [name for name, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
        return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]

    out = []
    if cats:
        out.append(t["categories"].format(categories=top(cats, 3)))
    if brands:
        out.append(t["brands"].format(brands=top(brands, 2)))
    if prices:
        out.append(t["price"].format(low=prices[0], high=prices[-1]))
    recent = [it["categories"][-1] for it in items[-2:] if it["categories"]]
    if recent:
        out.append(t["recent"].format(recent=top(Counter(recent), 2)))
    return " ".join(out) or t["fallback"]


def item_caption(item: dict[str, Any]) -> str:
    """Title, brand, category path and (the start of) the description of one item."""
    parts = [item["title"], f"by {item['brand']}" if item["brand"] else "",
             " > ".join(item["categories"]), item["description"][:200]]
    return ". ".join(p for p in parts if p)


def sequential_example(history: Sequence[str], target: str | None, catalog: Items, codebook: SIDCodebook,
                       with_images: bool = True, max_images: int = 4,
                       image_root: str | Path | None = None) -> dict[str, Any]:
    """History -> next item SID (``target=None`` leaves the assistant turn out, for inference)."""
    tpl = load_templates()
    user, images = _user_with_history(tpl["tasks"]["sequential"]["user"], history, catalog, codebook,
                                      with_images, max_images, image_root, tpl)
    answer = None if target is None else tpl["tasks"]["sequential"]["assistant"].format(
        target_sid=codebook.sid_string(target))
    return {"messages": _chat(user, answer, tpl), "images": images}


def persona_example(history: Sequence[str], catalog: Items, codebook: SIDCodebook, with_images: bool = True,
                    max_images: int = 4, image_root: str | Path | None = None) -> dict[str, Any]:
    """Interleaved history -> the user's persona."""
    tpl = load_templates()
    task = tpl["tasks"]["persona"]
    user, images = _user_with_history(task["user"], history, catalog, codebook, with_images, max_images,
                                      image_root, tpl)
    answer = task["assistant"].format(persona=persona_text(history, catalog, tpl))
    return {"messages": _chat(user, answer, tpl), "images": images}


def caption_example(item_id: str, direction: str, catalog: Items, codebook: SIDCodebook) -> dict[str, Any]:
    """Itemic dense captioning: ``direction`` "sid2text" (SID -> caption) or "text2sid" (title -> SID)."""
    if direction not in ("sid2text", "text2sid"):
        raise ValueError(f"direction must be 'sid2text' or 'text2sid', got {direction!r}")
    tpl = load_templates()
    task = tpl["tasks"][f"caption_{direction}"]
    item = catalog[item_id]
    fields = {"sid": codebook.sid_string(item_id), "title": item["title"], "caption": item_caption(item)}
    return {"messages": _chat([_text(task["user"].format(**fields))], task["assistant"].format(**fields), tpl),
            "images": []}


def general_example(item_id: str, variant: int, catalog: Items) -> dict[str, Any] | None:
    """Plain-language Q&A ``variant`` about one item (no SIDs); None when the answer field is empty."""
    tpl = load_templates()
    item = catalog[item_id]
    fields = {"title": item["title"], "description": item["description"][:300], "brand": item["brand"],
              "category_path": " > ".join(item["categories"])}
    qa = tpl["tasks"]["general"][variant]
    answer = qa["assistant"].format(**fields)
    if not (answer.strip() and item["title"]):
        return None
    return {"messages": _chat([_text(qa["user"].format(**fields))], answer, tpl), "images": []}


@functools.cache
def chat_templates(path: str | Path = PROMPTS_DIR / "chat.yaml") -> dict[str, Any]:
    """The served chat prompt's templates."""
    return yaml.safe_load(Path(path).read_text())


def chat_example(history: Sequence[str], user_messages: Sequence[str], constraints: Sequence[str],
                 target: str | None, catalog: Items, codebook: SIDCodebook) -> dict[str, Any]:
    """The served chat prompt (``prompts/chat.yaml``): history, the user's messages and the described
    constraints, answered by ``target``'s SID (``None``: no assistant turn, for inference)."""
    tpl, chat = load_templates(), chat_templates()
    dialogue = chat["dialogue"].format(lines="\n".join(chat["dialogue_line"].format(text=t) for t in user_messages)) \
        if user_messages else ""
    described = chat["constraints"].format(constraints=", ".join(constraints)) if constraints else ""
    template = chat["user"].replace("{dialogue}", dialogue).replace("{constraints}", described)
    if history:
        user, _ = _user_with_history(template, history, catalog, codebook, False, 0, None, tpl)
    else:
        user = [_text(template.replace("{history}", chat["empty_history"]))]
    answer = None if target is None else tpl["tasks"]["sequential"]["assistant"].format(
        target_sid=codebook.sid_string(target))
    return {"messages": _chat(user, answer, tpl), "images": []}


def served_prompt(tokenizer, history: Sequence[str], catalog: Items, codebook: SIDCodebook, max_history: int,
                  user_messages: Sequence[str] = (), constraints: Sequence[str] = ()) -> str:
    """The text ``think-rec serve`` sends its engine (and ``bench rec`` scores): the chat prompt of the latest
    ``max_history`` items, the dialogue and the constraints, ending in the assistant's generation header."""
    ex = chat_example(list(history)[-max_history:], user_messages, constraints, None, catalog, codebook)
    return tokenizer.apply_chat_template(ex["messages"], tokenize=False, add_generation_prompt=True)


@dataclass
class RecommendPrompt:
    """The rendered inference prompt: chat ``messages``, templated ``text`` and image paths in order."""

    messages: list[dict[str, Any]]
    text: str
    images: list[str]


def render_recommend_prompt(history_item_ids: Sequence[str], catalog: Items, codebook: SIDCodebook,
                            processor: Any, with_images: bool = True, max_images: int = 4,
                            image_root: str | Path | None = None) -> RecommendPrompt:
    """The sequential-preference prompt (same as in training) ending in the assistant's generation header; images
    for a text-only base (``processor`` a tokenizer) are an error naming the base."""
    ex = sequential_example(history_item_ids, None, catalog, codebook, with_images, max_images, image_root)
    if ex["images"]:
        require_vision(processor, "render_recommend_prompt(with_images=True)")
    text = processor.apply_chat_template(ex["messages"], tokenize=False, add_generation_prompt=True)
    return RecommendPrompt(ex["messages"], text, ex["images"])
