"""A few-million-parameter Qwen-VL (or text-only Qwen3) built offline: same architecture class as production,
random weights."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from think_rec.model.loading import auto_model_class
from think_rec.model.tokenizer import CHAT_TEMPLATE, TEXT_CHAT_TEMPLATE, train_tokenizer

VL_FAMILIES = ("qwen3_vl", "qwen2_5_vl")
FAMILIES = (*VL_FAMILIES, "qwen3")  # qwen3: text-only (AutoModelForCausalLM + tokenizer)
PATCH = {"qwen3_vl": 16, "qwen2_5_vl": 14}
HIDDEN, HEADS, HEAD_DIM = 128, 2, 64  # head_dim 64: vLLM's CPU attention rejects 16


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def tiny_config(family: str, tok: PreTrainedTokenizerFast, *, layers: int = 2):
    """Shrunk config of ``family``; vocab rounded up to a multiple of 64."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} not in {FAMILIES}")
    text = dict(vocab_size=_round_up(len(tok), 64), hidden_size=HIDDEN, intermediate_size=256,
                num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=1, head_dim=HEAD_DIM,
                max_position_embeddings=4096, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.pad_token_id)
    if family == "qwen3":
        return AutoConfig.for_model(family, **text, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                    tie_word_embeddings=True)  # like Qwen3-1.7B
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in [("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>")]}
    mrope = [12, 10, 10] if family == "qwen3_vl" else [8, 12, 12]  # sums to head_dim / 2
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope,
                               **({"mrope_interleaved": True} if family == "qwen3_vl" else {})}
    vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=1, out_hidden_size=HIDDEN,
                  patch_size=PATCH[family], spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen3_vl":
        vision.update(num_position_embeddings=256, deepstack_visual_indexes=[0])
        tie = True  # like Qwen3-VL-2B
    else:
        vision.update(window_size=4 * PATCH[family], fullatt_block_indexes=[0])
        tie = False  # like Qwen2.5-VL-3B
    return AutoConfig.for_model(family, text_config=text, vision_config=vision, tie_word_embeddings=tie, **ids)


def build_tiny(out_dir: str | Path, corpus: list[str], *, family: str = "qwen3_vl", seed: int = 0,
               vocab_size: int = 4000, layers: int = 2) -> Path:
    """Train a tokenizer on ``corpus``, build a random tiny ``family`` model + processor, save to ``out_dir``.

    VL families: images are resized to at most 4x4 patch-merges (16 image tokens); everything loads with
    ``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained(out_dir)``. ``qwen3``: a text-only
    ``AutoModelForCausalLM`` with its tokenizer (``think_rec.model.loading.load_model`` picks either).
    """
    out = Path(out_dir)
    vision = family in VL_FAMILIES
    tok = train_tokenizer(corpus, vocab_size, CHAT_TEMPLATE if vision else TEXT_CHAT_TEMPLATE)
    config = tiny_config(family, tok, layers=layers)
    torch.manual_seed(seed)
    model = auto_model_class(config).from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    if not vision:
        tok.save_pretrained(out)
        return out
    unit = PATCH[family] * 2  # patch * spatial merge
    image_proc = Qwen2VLImageProcessor(patch_size=PATCH[family], merge_size=2, temporal_patch_size=2,
                                       size={"shortest_edge": unit * unit, "longest_edge": 16 * unit * unit},
                                       image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video_cls, proc_cls = ((Qwen3VLVideoProcessor, Qwen3VLProcessor) if family == "qwen3_vl"
                           else (Qwen2VLVideoProcessor, Qwen2_5_VLProcessor))
    video = video_cls(patch_size=PATCH[family], merge_size=2, temporal_patch_size=2,
                      size={"shortest_edge": 2 * unit * unit, "longest_edge": 32 * unit * unit})
    proc = proc_cls(image_processor=image_proc, tokenizer=tok, video_processor=video, chat_template=tok.chat_template)
    proc.save_pretrained(out)
    return out
