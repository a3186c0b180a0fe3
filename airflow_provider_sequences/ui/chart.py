"""The runs-over-time chart: inline SVG, drawn here (the view fetches nothing from elsewhere)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from airflow_provider_sequences.ui.queries import RunSummary

ADDED_COLOUR = "#2f9e44"
UNCHANGED_COLOUR = "#adb5bd"
REQUESTS_COLOUR = "#1c7ed6"
SECONDS_COLOUR = "#a5d8ff"
FLOOR_COLOUR = "#212529"
# Reasons get these in order of how many keys they account for across the chart.
REASON_COLOURS = ("#e8590c", "#c92a2a", "#862e9c", "#f08c00", "#5f3dc4", "#a61e4d", "#d9480f", "#495057")


@dataclass(frozen=True)
class Series:
    name: str
    label: str
    colour: str
    values: Sequence[float]


def run_series(runs: Sequence[RunSummary], reasons_by_run: Sequence[dict[str, int]]) -> list[Series]:
    """Stacked from the bottom: added, not processed by reason, unchanged."""
    totals: dict[str, int] = {}
    for reasons in reasons_by_run:
        for reason, count in reasons.items():
            totals[reason] = totals.get(reason, 0) + count
    ordered = sorted(totals, key=lambda reason: (-totals[reason], reason))
    series = [Series("added", "added", ADDED_COLOUR, [run.count("added") for run in runs])]
    for index, reason in enumerate(ordered):
        colour = REASON_COLOURS[index % len(REASON_COLOURS)]
        values = [reasons.get(reason, 0) for reasons in reasons_by_run]
        series.append(Series(f"not_processed:{reason}", f"not processed: {reason}", colour, values))
    series.append(
        Series("unchanged", "unchanged", UNCHANGED_COLOUR, [run.count("unchanged") for run in runs])
    )
    return series


def _bars(
    labels: Sequence[str],
    run_ids: Sequence[str],
    series: Sequence[Series],
    *,
    chart_id: str,
    title: str,
    width: int = 760,
    height: int = 220,
    marks: Sequence[float | None] = (),
) -> Markup:
    """Stacked bars, one per run; ``marks`` (one per run, or none) draws a line across a bar at
    that value, on the same scale."""
    left, right, top, bottom = 56, 12, 24, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    count = len(labels)
    tops = [sum(s.values[i] for s in series) for i in range(count)]
    peak = max([*tops, *(mark for mark in marks if mark is not None)] or [0]) or 1
    slot = plot_w / max(count, 1)
    bar = max(min(slot * 0.7, 48), 2)
    parts = [
        f'<svg id="{chart_id}" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#868e96"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">{peak:,}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>',
        f'<line x1="{left}" y1="{top}" x2="{left + plot_w}" y2="{top}" stroke="#dee2e6" '
        'stroke-dasharray="3"/>',
    ]
    step = max(1, count // 8)
    for i in range(count):
        x = left + slot * i + (slot - bar) / 2
        y: float = top + plot_h
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{s.colour}" '
                f'data-run="{escape(run_ids[i])}" data-series="{escape(s.name)}" data-value="{value}">'
                f"<title>{escape(labels[i])}: {escape(s.label)} {value:,}</title></rect>"
            )
        mark = marks[i] if i < len(marks) else None
        if mark is not None:
            my = top + plot_h - plot_h * mark / peak
            parts.append(
                f'<line class="floor" x1="{x - 3:.1f}" y1="{my:.1f}" x2="{x + bar + 3:.1f}" y2="{my:.1f}" '
                f'stroke="{FLOOR_COLOUR}" stroke-width="2" data-run="{escape(run_ids[i])}" '
                f'data-value="{mark:g}"><title>{escape(labels[i])}: floor {mark:,.1f}</title></line>'
            )
        if i % step == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                f'font-size="10">{escape(labels[i])}</text>'
            )
    parts.append("</svg>")
    # Every text and attribute value above went through escape().
    return Markup("".join(parts))  # noqa: S704


def _labels(runs: Sequence[RunSummary]) -> list[str]:
    """When each run finished: to the minute, or to the second when minutes collide."""
    labels = [run.updated_at.strftime("%m-%d %H:%M") for run in runs]
    if len(set(labels)) < len(labels):
        labels = [run.updated_at.strftime("%m-%d %H:%M:%S") for run in runs]
    return labels


def runs_chart(runs: Sequence[RunSummary], series: Sequence[Series]) -> Markup:
    labels = _labels(runs)
    return _bars(
        labels,
        [run.run_id for run in runs],
        series,
        chart_id="outcomes-chart",
        title="Keys per run: added, not processed by reason, unchanged",
    )


def requests_chart(runs: Sequence[RunSummary]) -> Markup:
    labels = _labels(runs)
    series = [
        Series(
            "write_requests", "write requests", REQUESTS_COLOUR, [r.count("write_requests") for r in runs]
        ),
        Series("read_requests", "read requests", "#74c0fc", [r.count("read_requests") for r in runs]),
    ]
    return _bars(
        labels,
        [run.run_id for run in runs],
        series,
        chart_id="requests-chart",
        title="Requests spent per run",
        height=150,
    )


def pace_chart(runs: Sequence[RunSummary]) -> Markup:
    """Each run's duration (seconds), with a line at its floor: the least time the service's
    documented rate limits allow for the requests it made. Runs saved without a pace have none."""
    labels = _labels(runs)
    seconds = [round(run.pace.seconds, 1) if run.pace else 0.0 for run in runs]
    return _bars(
        labels,
        [run.run_id for run in runs],
        [Series("seconds", "seconds", SECONDS_COLOUR, seconds)],
        chart_id="pace-chart",
        title="Seconds per run against the rate-limit floor of its requests",
        height=150,
        marks=[run.pace.floor_seconds if run.pace else None for run in runs],
    )
