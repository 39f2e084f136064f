"""``data prepare`` output: images copied in and confined to the folder, atomic writes, no empty data."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pytest
from PIL import Image
from typer.testing import CliRunner

from think_rec.cli import app
from think_rec.data.errors import DataError
from think_rec.data.images import resolve_image
from think_rec.data.prepare import prepare
from think_rec.data.schema import RecDataset
from think_rec.prompts import image_path


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "blue").save(path)
    return path


def source(folder: Path, images: dict[str, str] | None = None, users: int = 3) -> Path:
    """A jsonl source: items a, b, c (``images`` by id) and ``users`` users who bought all three."""
    folder.mkdir(parents=True, exist_ok=True)
    items = [{"item_id": i, "title": f"Item {i}", **({"image": images[i]} if images and i in images else {})}
             for i in "abc"]
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (folder / "interactions.jsonl").write_text("".join(
        json.dumps({"user_id": f"u{n}", "item_ids": ["a", "b", "c"]}) + "\n" for n in range(users)))
    return folder


def test_images_are_copied_in_and_resolved_on_load(tmp_path, monkeypatch):
    png(tmp_path / "src" / "img" / "x" / "a.png")
    png(tmp_path / "src" / "img" / "y" / "a.png")
    source(tmp_path / "src", {"a": "img/x/a.png", "b": "img/y/a.png", "c": "https://cdn/c.jpg"})
    monkeypatch.chdir(tmp_path)
    prepare("jsonl", "src", "out")  # relative paths, as typed on a command line
    stored = datasets.load_from_disk(str(tmp_path / "out" / "catalog"))["image"]
    assert stored == ["images/x/a.png", "images/y/a.png", "https://cdn/c.jpg"]
    for f in (tmp_path / "src" / "img").rglob("*.png"):
        f.unlink()  # the prepared folder does not depend on its source
    monkeypatch.chdir("/")
    ds = RecDataset.load(tmp_path / "out")
    a = ds.catalog["a"]
    assert a["image"] == str((tmp_path / "out" / "images" / "x" / "a.png").resolve())
    assert image_path(a, tmp_path / "out") == Path(a["image"]) == image_path(a)
    assert image_path(ds.catalog["c"], tmp_path / "out") is None


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "not-an-image", "missing"])
def test_prepare_refuses_images_outside_the_source(tmp_path, case):
    outside = png(tmp_path / "secret.png")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.png").write_text("not a picture")
    (tmp_path / "src" / "link.png").symlink_to(outside)
    stored, message = {"dotdot": ("../secret.png", "lies outside"), "absolute": (str(outside), "lies outside"),
                       "symlink": ("link.png", "lies outside"), "not-an-image": ("notes.png", "not a readable image"),
                       "missing": ("gone.png", "file not found")}[case]
    source(tmp_path / "src", {"b": stored})
    with pytest.raises(DataError, match=message) as err:
        prepare("jsonl", str(tmp_path / "src"), tmp_path / "out")
    assert str(err.value).startswith(f"{tmp_path / 'src' / 'items.jsonl'}:2: image: ")
    assert not (tmp_path / "out").exists()
    (tmp_path / "src" / "interactions.jsonl").write_text('{"user_id": "u", "item_ids": ["a", "c"]}\n')
    stats = prepare("jsonl", str(tmp_path / "src"), tmp_path / "out", skip_bad_rows=True)
    assert (stats["items"], stats["dropped_rows"], stats["items_with_image"]) == (2, 1, 0)
    assert not (tmp_path / "out" / "images").exists()


def test_resolve_image_and_load_confine_paths_to_the_data_folder(tmp_path):
    root = tmp_path / "data"
    assert resolve_image(root, "images/a.png") == (root / "images" / "a.png").resolve()
    for bad in ["../x.png", "/etc/passwd", "images/../../x.png", "stats.json"]:
        with pytest.raises(DataError, match="image"):
            resolve_image(root, bad)
    with pytest.raises(DataError, match="outside"):
        image_path({"image": "/etc/hosts.png"}, root)
    assert image_path({"image": "/etc/passwd"}) is None
    png(tmp_path / "src" / "a.png")
    prepare("jsonl", str(source(tmp_path / "src", {"a": "a.png"})), root)
    items = datasets.load_from_disk(str(root / "catalog"))
    tampered = items.map(lambda r: {"image": "../../etc/passwd.png" if r["item_id"] == "a" else r["image"]})
    tampered.save_to_disk(str(tmp_path / "catalog2"))
    shutil.rmtree(root / "catalog")
    (tmp_path / "catalog2").rename(root / "catalog")
    with pytest.raises(DataError, match="outside"):
        RecDataset.load(root)


def test_existing_out_needs_overwrite(tmp_path):
    src = source(tmp_path / "src")
    runner = CliRunner()
    args = ["data", "prepare", "--source", "jsonl", "--path", str(src), "--out", str(tmp_path / "out")]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and "--overwrite" in " ".join(result.output.split())
    source(src, users=5)
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    assert RecDataset.load(tmp_path / "out").stats()["users"] == 5
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    result = runner.invoke(app, args[:-1] + [str(tmp_path / "home"), "--overwrite"])
    assert result.exit_code != 0 and "not a prepared data folder" in " ".join(result.output.split())
    assert (tmp_path / "home" / "notes.txt").read_text() == "keep me"


def test_kcore_that_empties_the_data_fails_and_writes_nothing(tmp_path):
    src = source(tmp_path / "src")
    args = ["data", "prepare", "--source", "jsonl", "--path", str(src), "--out", str(tmp_path / "out"), "--kcore", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "0 users after k-core 5" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == [src]
    prepare("jsonl", str(src), tmp_path / "out")
    before = RecDataset.load(tmp_path / "out").stats()
    assert CliRunner().invoke(app, args + ["--overwrite"]).exit_code != 0
    assert RecDataset.load(tmp_path / "out").stats() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


SLOW_PREPARE = textwrap.dedent("""
    import sys, time
    import datasets
    from think_rec.cli import app

    save, calls = datasets.Dataset.save_to_disk, []

    def slow_save(self, path, *args, **kwargs):  # the kill lands after the N-th table is on disk
        save(self, path, *args, **kwargs)
        calls.append(path)
        if len(calls) == int(sys.argv[1]):
            print("WRITTEN", path, flush=True)
            time.sleep(60)

    datasets.Dataset.save_to_disk = slow_save
    app(sys.argv[2:])
""")


@pytest.mark.parametrize("stall_after", [1, 2])  # catalog written / interactions written
def test_sigkill_mid_write_leaves_the_old_folder(tmp_path, stall_after):
    old_src = source(tmp_path / "old", {"a": "a.png"}, users=2)
    png(old_src / "a.png")
    new_src = source(tmp_path / "new", users=7)
    out = tmp_path / "out"
    prepare("jsonl", str(old_src), out)
    old = RecDataset.load(out)
    cmd = [sys.executable, "-c", SLOW_PREPARE, str(stall_after), "data", "prepare", "--source", "jsonl",
           "--path", str(new_src), "--out", str(out), "--overwrite"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen: list[str] = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("WRITTEN"):
                break
        assert seen and seen[-1].startswith("WRITTEN"), "".join(seen)  # the kill must land mid-write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    now = RecDataset.load(out)
    assert now.stats() == old.stats() and now.catalog.ids == old.catalog.ids
    assert Path(now.catalog["a"]["image"]).is_file()
    time.sleep(0.1)
    assert prepare("jsonl", str(new_src), out, overwrite=True)["users"] == 7  # and the leftovers go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old", "out"]


def test_skip_bad_rows_prints_a_summary_by_reason(tmp_path):
    src = source(tmp_path / "src")
    with (src / "interactions.jsonl").open("a") as f:
        f.write('{"user_id": "x", "item_ids": ["zz"]}\n{"user_id": "y", "item_ids": ["yy"]}\n{"user_id": 0.5}\n')
    result = CliRunner().invoke(app, ["data", "prepare", "--source", "jsonl", "--path", str(src), "--out",
                                      str(tmp_path / "out"), "--skip-bad-rows"])
    assert result.exit_code == 0, result.output
    tail = result.output[result.output.index("dropped 3 bad rows:"):].splitlines()
    assert [line.split(None, 1) for line in tail[1:] if line.strip()] == [
        ["2", "item_ids: unknown item id '…'"], ["1", "user_id: expected a string or integer id, got float"]]
