"""`DIR/metrics.jsonl` (one JSON object per optimizer step) and `DIR/loss.png`.

A resumed run first drops every line past the step it restored (those steps
are recomputed), then appends: the file never holds a step twice.
"""
from __future__ import annotations

import json
import os
from typing import List


def read_metrics(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                break       # a line cut by a kill: everything after it is lost too
    return out


class MetricsLog:
    """Appends step records; on open keeps only records with step <= `resume_step`."""

    def __init__(self, path: str, resume_step: int, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= resume_step]
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def plot_loss(metrics_path: str, png_path: str) -> None:
    """Loss (and learning rate) against step, written with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in records], color="tab:blue", lw=1.2, label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in records], color="tab:orange", lw=0.8, alpha=0.7,
               label="lr")
    lr_ax.set_ylabel("learning rate")
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(metrics_path))) or "training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
