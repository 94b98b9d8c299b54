"""Scenario 10's curves as the docs show them: one Markdown table (each operation's CPU per request
and p50 latency at every point of each axis, and largest ÷ smallest), and a plot of the same
(matplotlib), each curve divided by its value at the axis's smallest state, so that flat is a
horizontal line and the 1.2 bound is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FLAT = 1.2  # largest ÷ smallest, at most
STATE = dict[str, dict[str, Any]]  # axis -> what curves.measure_axis found


def _spread(values: list[float]) -> float:
    return max(values) / min(values)


def curves_table(state: STATE, whats: dict[str, str]) -> str:
    """| as the state grows | request | CPU per request, ms | ÷ | p50, ms | ÷ |"""
    lines = ["| as the state grows | request | CPU of the proxy per request, ms | largest ÷ smallest | p50 latency, ms | "
             "largest ÷ smallest |", "|---|---|---|---|---|---|"]
    for axis, found in state.items():
        grows = f"{whats[axis]}: {' / '.join(found['points'])}"
        for name, costs in found["costs"].items():
            cpu, p50 = [c["cpu_ms"] for c in costs], [c["p50_ms"] for c in costs]
            lines.append(f"| {grows} | {name} | {' / '.join(f'{v:.2f}' for v in cpu)} | {_spread(cpu):.2f} | "
                         f"{' / '.join(f'{v:.1f}' for v in p50)} | {_spread(p50):.2f} |")
            grows = ""
    return "\n".join(lines)


def draw(state: STATE, whats: dict[str, str], path: Path) -> None:
    """Two rows of panels, one column per axis: CPU per request (top) and p50 latency (bottom),
    each operation's curve divided by its first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(2, len(state), figsize=(4.2 * len(state), 7.5), squeeze=False, sharey="row")
    for column, (axis, found) in enumerate(state.items()):
        for row, (figure_of, unit) in enumerate((("cpu_ms", "CPU per request"), ("p50_ms", "p50 latency"))):
            panel = panels[row][column]
            positions = range(len(found["points"]))
            for name, costs in found["costs"].items():
                values = [c[figure_of] for c in costs]
                panel.plot(positions, [v / values[0] for v in values], marker="o", label=f"{name} ({values[0]:.2f} ms)")
            panel.axhline(1.0, color="grey", linewidth=0.8)
            for bound in (FLAT, 1 / FLAT):
                panel.axhline(bound, color="grey", linewidth=0.8, linestyle="--")
            ticks = [f"{size:,}" + (" (a pattern's)" if pattern else "")
                     for size, pattern in zip(found["sizes"], found["pattern"], strict=True)]
            panel.set_xticks(list(positions), ticks, rotation=30, ha="right", fontsize=8)
            panel.set_title(f"{unit} as {whats[axis]} grow", fontsize=9)
            panel.legend(fontsize=7, loc="upper left")
            if column == 0:
                panel.set_ylabel(f"{unit} ÷ at the smallest state")
    for panel in panels.flat:
        low, high = panel.get_ylim()
        panel.set_ylim(min(low, 0.7), max(high, 1.4))
    figure.suptitle("A request's cost as the proxy's state grows, ÷ its cost at the smallest state (dashed: ×1.2, ÷1.2)",
                    fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
