"""Server-rendered SVG charts: the geometry is computed here and drawn by a Jinja
macro, so the dashboard needs no chart library and works without JavaScript."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT, BOTTOM = 720, 200, 24


@dataclass
class Bar:
    x: float
    width: float
    y_in: float
    h_in: float
    y_out: float
    h_out: float
    label: str
    anchor: str
    title: str


def day_bars(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars (tokens in below tokens out), one per day, scaled to the busiest day."""
    peak = max((d["tokens_in"] + d["tokens_out"] for d in days), default=0) or 1
    slot = WIDTH / max(1, len(days))
    plot = HEIGHT - BOTTOM
    bars = []
    for index, day in enumerate(days):
        h_in = plot * day["tokens_in"] / peak
        h_out = plot * day["tokens_out"] / peak
        bars.append(Bar(
            x=round(index * slot + slot * 0.15, 2), width=round(slot * 0.7, 2),
            y_in=round(plot - h_in, 2), h_in=round(h_in, 2),
            y_out=round(plot - h_in - h_out, 2), h_out=round(h_out, 2),
            label=day["date"][5:] if index % 5 == 0 or index == len(days) - 1 else "",
            anchor="start" if index == 0 else "end" if index == len(days) - 1 else "middle",
            title=f"{day['date']}: {day['requests']} requests, {day['tokens_in']} in / "
                  f"{day['tokens_out']} out, {day['errors']} errors",
        ))
    return {"bars": bars, "width": WIDTH, "height": HEIGHT, "plot": plot, "peak": peak}
