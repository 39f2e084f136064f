"""``load_model``: a preset name, a local checkpoint dir or a hub id -> (model, processor); optional 4/8-bit.

The one place that tells the two kinds of base apart, from the config: a VLM (``vision_config``) loads through
``AutoModelForImageTextToText`` + ``AutoProcessor``, any other causal LM (Qwen3, Qwen2.5, Llama, SmolLM2) through
``AutoModelForCausalLM`` + ``AutoTokenizer``."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer,
                          BitsAndBytesConfig, PretrainedConfig)

from think_rec.model.presets import PRESETS, SMOL, TINY
from think_rec.model.tokenizer import TEXT_CHAT_TEMPLATE

TINY_DIR = Path(os.environ.get("THINK_REC_HOME", "~/.cache/think_rec")).expanduser() / "tiny"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
GENERATION_BLOCK = re.compile(r"{%-?\s*generation\s*-?%}")
log = logging.getLogger(__name__)


def looks_local(name: str) -> bool:
    """A path rather than a hub ``org/name``: ./ ../ / ~ at the start, an existing parent folder, or a
    separator other than one ``org/name`` slash."""
    if name.startswith(("./", "../", "/", "~")) or (os.sep != "/" and os.sep in name):
        return True
    parent = Path(name).parent
    return (parent != Path(".") and parent.is_dir()) or ("/" in name and not HUB_ID.fullmatch(name))


def resolve(path_or_preset: str | Path, allow_hub: bool | None = None) -> str:
    """Preset name -> hub id or built dir; an existing dir; else a hub id. A missing folder that looks local
    is an error unless hub downloads are allowed (``allow_hub``, default env ``THINK_REC_ALLOW_HUB=1``)."""
    name = str(path_or_preset)
    if name == TINY:
        if not (TINY_DIR / "config.json").exists():
            raise FileNotFoundError(f"preset 'tiny' is not built in {TINY_DIR}: call "
                                    "think_rec.model.build_tiny(TINY_DIR, corpus) first (or set THINK_REC_HOME)")
        return str(TINY_DIR)
    if name == SMOL:
        from think_rec.model.smol import ensure_smol

        return str(ensure_smol())
    if name in PRESETS:
        return PRESETS[name]
    if Path(name).exists() and not (Path(name) / "config.json").exists():
        raise FileNotFoundError(f"{name}: no config.json, not a model checkpoint")
    if allow_hub is None:
        allow_hub = os.environ.get("THINK_REC_ALLOW_HUB") == "1"
    if not Path(name).exists() and looks_local(name) and not allow_hub:
        raise FileNotFoundError(f"{name}: no such model folder (to download it as a hub id instead, pass "
                                "allow_hub=True or set THINK_REC_ALLOW_HUB=1)")
    return name


def is_multimodal(config: PretrainedConfig) -> bool:
    """A VLM (its config has a ``vision_config``) rather than a text-only causal LM."""
    return getattr(config, "vision_config", None) is not None


def auto_model_class(config: PretrainedConfig) -> type:
    """``AutoModelForImageTextToText`` for a VLM, ``AutoModelForCausalLM`` for a text-only base."""
    return AutoModelForImageTextToText if is_multimodal(config) else AutoModelForCausalLM


def load_processor(path: str | Path):
    """The multimodal processor of a VLM, the tokenizer of a text-only base. A ChatML text tokenizer whose chat
    template has no ``{% generation %}`` block (assistant-only loss) nor content-part lists gets
    ``TEXT_CHAT_TEMPLATE`` (the same ChatML layout)."""
    if is_multimodal(AutoConfig.from_pretrained(str(path))):
        try:
            return AutoProcessor.from_pretrained(str(path))
        except (ValueError, OSError, TypeError):  # a checkpoint saved without its processor
            return AutoTokenizer.from_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    if not GENERATION_BLOCK.search(tok.chat_template or ""):
        if "<|im_start|>" in tok.get_vocab():
            tok.chat_template = TEXT_CHAT_TEMPLATE
        else:
            log.warning("%s: its chat template has no {%% generation %%} block, so assistant-only loss "
                        "(stage 1) fails; give the tokenizer one", path)
    return tok


def require_vision(processor: Any, where: str) -> None:
    """Raise, naming the base and ``where`` the images come from, when ``processor`` is a text-only base's tokenizer."""
    if not hasattr(processor, "image_processor"):
        base = getattr(processor, "name_or_path", "") or type(processor).__name__
        raise ValueError(f"{where}: images in a prompt, but the base {base} is text-only (no vision_config): "
                         "use a Qwen-VL base or drop the images")


def quantization_config(quantization: str | None, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization is None:
        return None
    skip = ["visual", "lm_head"]  # keep the vision tower and output head in full precision
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    raise ValueError(f"quantization must be '4bit', '8bit' or None, not {quantization!r}")


def load_model(path_or_preset: str | Path, *, quantization: str | None = None, dtype: torch.dtype = torch.float32,
               device_map: str | None = None, gradient_checkpointing: bool = False, allow_hub: bool | None = None):
    """``(model, processor)`` via ``auto_model_class``; with ``quantization`` the weights load through
    bitsandbytes (``device_map`` defaults to "cpu") and are prepared for QLoRA (peft
    ``prepare_model_for_kbit_training``); ``allow_hub`` as in ``resolve``."""
    qconfig = quantization_config(quantization, dtype)
    path = resolve(path_or_preset, allow_hub)
    if qconfig is not None and device_map is None:
        device_map = "cpu" if not torch.cuda.is_available() else "auto"
    config = AutoConfig.from_pretrained(path)
    model = auto_model_class(config).from_pretrained(path, config=config, dtype=dtype, quantization_config=qconfig,
                                                     device_map=device_map)
    if qconfig is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model, load_processor(path)
