"""Offline Qwen-style tokenizer: ByteLevel BPE trained on a corpus; ChatML chat templates with or without image
parts."""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
THINK_TOKENS = ["<think>", "</think>"]

IMAGE_PARTS = ("{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
               "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
               "{%- elif part['type'] == 'video' or 'video' in part -%}"
               "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
               "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}")
# a text-only base: image or video parts are an error (the Python callers name the base first)
TEXT_PARTS = ("{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
              "{%- else -%}{{- raise_exception('image/video part in a prompt for a text-only base') -}}{%- endif -%}")


def chat_template(user_parts: str) -> str:
    """ChatML; assistant turns sit in {% generation %} blocks (assistant-only loss); ``user_parts`` renders one
    content part of a non-assistant turn."""
    return (
        "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{- '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
        "{%- else -%}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}" + user_parts + "{%- endfor -%}{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


CHAT_TEMPLATE = chat_template(IMAGE_PARTS)  # Qwen-VL
TEXT_CHAT_TEMPLATE = chat_template(TEXT_PARTS)  # Qwen3 / Qwen2.5 / SmolLM2 (ChatML text models)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 4000,
                    template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """Train a ByteLevel BPE on ``corpus`` and wrap it like a Qwen tokenizer (pad = ``<|endoftext|>``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=template)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    fast.add_tokens(THINK_TOKENS)
    return fast
