"""``write_report``: one benchmark's payload as NAME.json, a markdown table and a bar chart."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence


def write_report(name: str, payload: dict[str, Any], out_dir: str | Path = "eval/results",
                 metric_keys: Sequence[str] | None = None) -> Path:
    """Write ``NAME.json`` (the payload verbatim), ``NAME.md`` and ``NAME.png``; return the json path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload.get("rows")
    if not rows or any("system" not in r for r in rows):
        raise ValueError(f"report {name!r}: payload needs rows=[{{'system': ..., metric: value}}, ...]")
    keys = list(metric_keys or [k for k in rows[0] if k != "system" and isinstance(rows[0][k], (int, float))])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"# {payload.get('benchmark', name)}" + (f" — {payload['dataset']}" if "dataset" in payload else ""),
             "", "| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([str(r["system"])] + [fmt(r.get(k, "")) for k in keys]) + " |" for r in rows]
    extra = {k: v for k, v in payload.items() if k not in ("benchmark", "dataset", "rows")}
    lines += [""] + [f"- **{k}**: {json.dumps(v) if isinstance(v, (dict, list)) else fmt(v)}" for k, v in extra.items()]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(keys) * len(rows) / 2 + 2), 3.5))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([j + i * width for j in range(len(keys))], [r.get(k, 0) or 0 for k in keys], width,
               label=str(r["system"]))
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(keys))], keys)
    ax.set_title(f"{payload.get('benchmark', name)}" + (f" ({payload['dataset']})" if "dataset" in payload else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    return path
