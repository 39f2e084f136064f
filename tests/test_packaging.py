"""A wheel install works: templates and configs ship as package data and are found outside the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from think_rec import prompts
    from think_rec.itemic.codebook import SIDCodebook
    from think_rec.serve.conversation import chat_templates

    venv = Path(sys.prefix).resolve()
    assert prompts.PROMPTS_DIR.resolve().is_relative_to(venv), prompts.PROMPTS_DIR
    items = {f"i{k}": {"title": f"Item {k}", "image": None} for k in range(4)}
    codebook = SIDCodebook({i: (k, 0, 0) for k, i in enumerate(items)}, [4, 1, 1])
    ex = prompts.sequential_example(["i0", "i1"], "i3", items, codebook, with_images=False)
    user = "".join(p["text"] for p in ex["messages"][1]["content"])
    assert codebook.sid_string("i1") + " Item 1" in user, user
    assert ex["messages"][2]["content"][0]["text"] == codebook.sid_string("i3")
    assert "dialogue" in chat_templates()
    import think_rec.finetune
    assert (Path(think_rec.finetune.__file__).parent / "configs" / "align_multitask.yaml").is_file()
    print("OK", prompts.PROMPTS_DIR)
""")


def _site_dirs() -> list[str]:
    """This interpreter's site-packages folders (the venv's and any it chains to), for the temp venv."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


def test_wheel_install_renders_prompts_outside_source_tree(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", "runs", "outputs", ".pytest_cache"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, env=env, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("think_rec-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, env=env, cwd=tmp_path)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text("\n".join(_site_dirs()) + "\n")  # the dependencies, not think_rec
    shutil.rmtree(src)  # nothing may be read from a source tree

    out = subprocess.run([str(python), "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK")
