"""Shared fixtures: the read-only real data beside the repository and a small synthetic shop."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (see its README.md); the test is skipped only when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found (real data lives beside the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A generated ``RecDataset``: 120 items with 64x64 PNG images, 200 users (seed 0)."""
    from think_rec.data.synthetic import generate_catalog

    return generate_catalog(120, 200, seed=0, image_dir=tmp_path_factory.mktemp("synthetic") / "images")
