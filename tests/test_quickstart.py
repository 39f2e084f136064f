"""The quickstart's calm screen: a stage's library output goes to the log, the screen gets one line."""
from __future__ import annotations

import io

from rich.console import Console
from tqdm import tqdm

from think_rec.quickstart import stage


def test_stage_sends_library_output_to_the_log(tmp_path):
    screen = io.StringIO()
    log = tmp_path / "quickstart.log"
    with stage(Console(file=screen, width=200), log, "stage 1"):
        print({"loss": 1.25, "step": 20})  # what the Trainer prints per logging step
        for _ in tqdm(range(3), desc="Tokenizing"):
            pass
    assert "done stage 1" in screen.getvalue()
    assert "loss" not in screen.getvalue() and "Tokenizing" not in screen.getvalue()
    text = log.read_text()
    assert "=== stage 1" in text and "'loss': 1.25" in text and "Tokenizing" in text
