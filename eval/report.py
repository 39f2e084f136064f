"""``write_report``: one benchmark's payload as NAME.json, a markdown table and a bar chart."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Sequence


def git_commit() -> str:
    """The checkout's commit (``+dirty`` when tracked files differ from it), or "unknown" outside git."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(name: str, payload: dict[str, Any], out_dir: str | Path = "eval/results",
                 metric_keys: Sequence[str] | None = None, chart_keys: Sequence[str] | None = None,
                 notes: str = "") -> Path:
    """Write ``NAME.json`` (the payload and the ``commit`` that wrote it), ``NAME.md`` and ``NAME.png``; return the
    json path.

    The table shows ``metric_keys`` (default: the numeric ones) per row, then the payload's other keys and
    ``notes``; the chart has one panel per ``chart_keys`` (default: the numeric metric keys). Rows are
    labelled by ``system`` and their string-valued table columns; rows with ``"published": true`` (numbers from a
    paper, with their ``source``) are marked "(published)", hatched in the chart and their sources listed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload.get("rows")
    if not rows or any("system" not in r for r in rows):
        raise ValueError(f"report {name!r}: payload needs rows=[{{'system': ..., metric: value}}, ...]")
    published = [r for r in rows if r.get("published")]
    if any("source" not in r for r in published):
        raise ValueError(f"report {name!r}: every row with 'published' needs its 'source'")
    payload.setdefault("commit", git_commit())
    keys = list(metric_keys or [k for k in rows[0] if k != "system" and isinstance(rows[0][k], (int, float))])
    charted = list(chart_keys or [k for k in keys if isinstance(rows[0].get(k), (int, float))])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))

    def fmt(v: Any) -> str:
        if not isinstance(v, float):
            return str(v)
        return f"{v:.3g}" if 0 < abs(v) < 5e-5 else f"{v:.4f}"  # a learning rate is not 0.0000

    def system(r: dict[str, Any]) -> str:
        return str(r["system"]) + (" (published)" if r.get("published") else "")

    lines = [f"# {payload.get('benchmark', name)}" + (f" — {payload['dataset']}" if "dataset" in payload else ""),
             "", "| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([system(r)] + [fmt(r.get(k, "")) for k in keys]) + " |" for r in rows]
    lines += [""] * bool(published) + [f"- {system(r)}: {r['source']}" for r in published]
    extra = {k: v for k, v in payload.items() if k not in ("benchmark", "dataset", "rows")}
    lines += [""] * bool(extra) + [f"- **{k}**: {json.dumps(v) if isinstance(v, (dict, list)) else fmt(v)}"
                                   for k, v in extra.items()]
    lines += ["", notes] if notes else []
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")

    labels = [" ".join([system(r)] + [r[k] for k in keys if isinstance(r.get(k), str)]) for r in rows]
    fig, axes = plt.subplots(1, len(charted), figsize=(max(4, (1 + 0.35 * len(rows)) * len(charted)), 3.5),
                             squeeze=False)
    for ax, key in zip(axes[0], charted):  # one panel per metric: each on its own scale
        for i, (r, label) in enumerate(zip(rows, labels)):
            ax.bar(i, r.get(key, 0) or 0, color=f"C{i % 10}", label=label, hatch="//" if r.get("published") else None)
        ax.set_title(key, fontsize=9)
        ax.set_xticks([])
    ncol = min(4, len(rows))
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle(f"{payload.get('benchmark', name)}" + (f" ({payload['dataset']})" if "dataset" in payload else ""),
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.04 + 0.05 * -(-len(rows) // ncol), 1, 1))
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    return path
