"""Prompt templates as data (``align.yaml``, ``chat.yaml``), installed as ``think_rec.prompt_templates``."""
