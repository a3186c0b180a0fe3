"""The figures as a text table (with targets met or missed, and why) and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.nights import over_read
from bench.nights import verdict_rows as night_rows

THROUGHPUT_TARGET = 20_000
RSS_TARGET_MB = 600
RSS_RATIO_TARGET = 1.5
RERUN_TARGET_S = 20


def _mark(met: bool) -> str:
    return "met" if met else "MISSED"


def _mmm(entry: dict[str, float], fmt: str = "{:,.2f}") -> str:
    low, high = fmt.format(entry["min"]), fmt.format(entry["max"])
    return f"{fmt.format(entry['median'])} [{low}-{high}] n={entry['n']}"


def _at_1m(rows: int, met: bool, cause: str) -> str:
    """The verdict of a target judged at 1M rows: smaller sizes are informative."""
    if rows < 1_000_000:
        return "(informative)"
    return _mark(met) + (f" ({cause})" if not met and cause else "")


def _throughput_rows(case: str, tp: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Scenarios 3-5 of one case: rows/s, peak RSS and its growth, the nightly re-run."""
    rows: list[tuple[str, str, str, str]] = []
    sizes = sorted(tp["sizes"].values(), key=lambda e: e["rows"])
    for e in sizes:
        rate = e["rows_per_s"]["median"]
        phases = e.get("phase_wall_s", {})
        confirm = phases.get("confirm", 0.0)
        cause = (
            f"{rate / THROUGHPUT_TARGET:.0%} of target; the sync's own CPU is "
            f"{e['cpu_share_of_wall']:.0%} of wall, the rest is waiting on the simulator"
            + (f"; {confirm:.1f} s of {e['wall_s']['median']:.1f} s reading back" if confirm >= 0.5 else "")
        )
        rows.append(
            (
                f"3. {case}: rows/s end to end, {e['rows']:,} rows",
                _mmm(e["rows_per_s"], "{:,.0f}")
                + f" ({e['write_requests']} writes + {e['read_requests']} reads, {e['added']:,} added)",
                f">= {THROUGHPUT_TARGET:,} (at 1M)",
                _at_1m(e["rows"], rate >= THROUGHPUT_TARGET, cause),
            )
        )
    for e in sizes:
        rss = e["peak_rss_mb"]["median"]
        rows.append(
            (
                f"4. {case}: peak RSS, {e['rows']:,} rows",
                _mmm(e["peak_rss_mb"], "{:,.0f}") + " MB",
                f"<= {RSS_TARGET_MB} MB (at 1M)",
                _at_1m(e["rows"], rss <= RSS_TARGET_MB, f"{rss - RSS_TARGET_MB:,.0f} MB over"),
            )
        )
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        ratio = large["peak_rss_mb"]["median"] / small["peak_rss_mb"]["median"]
        judged = large["rows"] >= 1_000_000 and small["rows"] <= 100_000
        cause = (
            f"{large['rows'] // small['rows']}x the rows cost {ratio:.2f}x the memory: "
            "something holds data per row"
        )
        rows.append(
            (
                f"4. {case}: RSS({large['rows']:,}) / RSS({small['rows']:,})",
                f"{ratio:.2f}",
                f"<= {RSS_RATIO_TARGET} (1M / 100k)",
                (_mark(ratio <= RSS_RATIO_TARGET) + (f" ({cause})" if ratio > RSS_RATIO_TARGET else ""))
                if judged
                else "(informative)",
            )
        )
    rerun = tp.get("rerun")
    if rerun:
        u = rerun["unchanged"]
        wall = u["wall_s"]["median"]
        causes = []
        if u["write_requests"]:
            causes.append(f"{u['write_requests']} writes sent")
        if wall > RERUN_TARGET_S:
            causes.append(f"{wall:.1f} s, {wall / RERUN_TARGET_S:.1f}x the time allowed")
        met = not causes
        rows.append(
            (
                f"5. {case}: unchanged re-run, {u['rows']:,} rows",
                f"{u['write_requests']} writes, {u['read_requests']} reads, {_mmm(u['wall_s'])} s",
                f"0 writes, <= {RERUN_TARGET_S} s (at 1M)",
                _at_1m(u["rows"], met, "; ".join(causes))
                if u["rows"] >= 1_000_000
                else "(informative) " + _mark(met),
            )
        )
        c = rerun["one_percent"]
        extra = c["write_requests"] - c["expected_write_requests"]
        rows.append(
            (
                f"5. {case}: 1% new/changed ({c['new_rows']:,} new + {c['changed_rows']:,} changed)",
                f"{c['write_requests']} writes + {c['read_requests']} reads, "
                f"{c['added']:,} added, {c['wall_s']:.2f} s",
                f"~{c['expected_write_requests']} writes ({c['expected_rule']})",
                _mark(extra <= 0) + (f" ({extra} writes more than the new rows need)" if extra > 0 else ""),
            )
        )
    return rows


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, figure, target, verdict with cause) rows."""
    rows: list[tuple[str, str, str, str]] = []
    scenarios = results["scenarios"]
    per = scenarios.get("requests_per_1000")
    if per:
        for case, c in per["cases"].items():
            rows.append(
                (
                    f"1. {case}: requests / 1,000 new ({per['rows']:,} rows)",
                    f"{c['writes_per_1000']:.2f} writes + {c['reads_per_1000']:.2f} reads",
                    f"<= {c['target']} {c['target_counts']}",
                    _mark(c["met"]) + (f" ({c['note']})" if c["note"] else ""),
                )
            )
    tp = scenarios.get("throughput")
    if tp:
        for case, figures in tp["cases"].items():
            rows.extend(_throughput_rows(case, figures))
    base = scenarios.get("baseline")
    if base:
        for service, b in base["services"].items():
            met = b["request_ratio"] >= 100 and b["speedup"] >= 20
            floors = b["floor_under_limits_s"]
            rows.append(
                (
                    f"6. {service} vs hand-written loop ({base['rows']:,} rows)",
                    f"{b['hand_requests']:,} vs {b['ours_requests']} requests ({b['request_ratio']:,.0f}x); "
                    f"{b['hand_wall_s']:.1f} s vs {b['ours_wall_s']['median']:.2f} s ({b['speedup']:.1f}x); "
                    f"under the limits {floors['hand'] / 3600:.1f} h vs {floors['ours']:.0f} s",
                    ">= 100x fewer requests, >= 20x faster",
                    _mark(met) + (f" ({b['note']})" if b["note"] else ""),
                )
            )
    fit = scenarios.get("rate_limit_fit")
    if fit:
        for service, f in fit["cases"].items():
            rows.append(
                (
                    f"2. {service} under limits (time scale {fit['time_scale']:g})",
                    f"{f['requests']} requests in {f['span_s']:.2f} s, floor {f['floor_s']:.2f} s "
                    f"({f['ratio_to_floor']:.3f}x), {f['rate_limited_429']} 429s",
                    "<= 1.05x floor, 0 429s",
                    _mark(f["met"]) + (f" ({f['note']})" if f["note"] else ""),
                )
            )
    multi = scenarios.get("multi_worker")
    if multi:
        for service, f in multi["cases"].items():
            rows.append(
                (
                    f"7. {service}: {multi['workers']} workers on one account "
                    f"(time scale {multi['time_scale']:g})",
                    f"{f['requests']} requests in {f['span_s']:.2f} s, floor {f['floor_s']:.2f} s "
                    f"({f['ratio_to_floor']:.3f}x), {f['rate_limited_429']} 429s, {f['added']} added",
                    "<= 1.10x floor, 0 429s",
                    _mark(f["met"]) + (f" ({f['note']})" if f["note"] else ""),
                )
            )
    view = scenarios.get("ui_first_page")
    if view:
        slowest = max(t["first"] for t in view["timings_seconds"].values())
        first = view["timings_seconds"]["sequence page, first page of the latest run"]["first"]
        rows.append(
            (
                f"Sequence syncs view, {view['keys']:,} keys",
                f"first page {first:.2f} s; slowest page {slowest:.2f} s",
                "first page < 2 s",
                _mark(first < 2.0 and slowest < 2.0),
            )
        )
    if scenarios.get("nights"):
        rows.extend(night_rows(scenarios["nights"]))
    xcom = scenarios.get("xcom_results")
    if xcom:
        for backend, f in xcom["backends"].items():
            rows.append(
                (
                    f"8. {backend} XCom backend ({xcom['rows']:,} rows)",
                    f"push {f['push_s']:.2f} s, pull {f['pull_s']:.2f} s, metadata DB "
                    f"+{f['metadata_db_growth_mb']:.2f} MB, store {f['store_mb']:.2f} MB, "
                    f"peak RSS {f['peak_rss_mb']:.0f} MB",
                    "measured, no target",
                    "",
                )
            )
    return rows


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"\nMachine: {m['cpus_usable']} usable of {m['cpus']} CPUs ({m['cpu_model']}), "
        f"{m['memory_mb']:,} MB, "
        f"Python {m['python']}; {results['mode']} mode; {results['command']}",
        "",
    ]
    rows = verdicts(results)
    widths = [max(len(r[i]) for r in rows) if rows else 0 for i in range(3)]
    for measure, figure, target, verdict in rows:
        lines.append(f"{measure:<{widths[0]}}  {figure:<{widths[1]}}  {target:<{widths[2]}}  {verdict}")
    cases = results["scenarios"].get("throughput", {}).get("cases", {})
    for case, figures in cases.items():
        for size, entry in figures["sizes"].items():
            if "profile" not in entry:
                continue
            lines.append(
                f"\nWhere the time goes, {case} at {int(size):,} rows (cProfile of the main and sending "
                "threads, cumulative s; stages nest, and the threads overlap):"
            )
            for stage, seconds in entry["profile"]["stages_cumulative_s"].items():
                lines.append(f"  {stage:<30} {seconds:8.2f}")
            lines.append(f"  {'profiled wall':<30} {entry['profile']['profiled_wall_s']:8.2f}")
    durations = results.get("duration_by_scenario_s")
    if durations:
        lines.append("\nScenario wall times: " + ", ".join(f"{k} {v:,.0f} s" for k, v in durations.items()))
        tp_cases = ", ".join(
            f"{case} {f['duration_s']:,.0f} s" for case, f in cases.items() if "duration_s" in f
        )
        if tp_cases:
            lines.append(f"  throughput by case: {tp_cases}")
    return "\n".join(lines)


def _grouped_bars(ax: Any, cases: dict[str, Any], measure: str, unit: str) -> None:
    """One group of bars per size, one bar per case (median, whiskers min to max)."""
    sizes = sorted({int(n) for figures in cases.values() for n in figures["sizes"]})
    width = 0.8 / max(len(cases), 1)
    for i, (case, figures) in enumerate(cases.items()):
        xs, med, low, high = [], [], [], []
        for x, n in enumerate(sizes):
            entry = figures["sizes"].get(str(n))
            if entry is None:
                continue
            m = entry[measure]
            xs.append(x - 0.4 + width * (i + 0.5))
            med.append(m["median"])
            low.append(m["median"] - m["min"])
            high.append(m["max"] - m["median"])
        ax.bar(xs, med, width, yerr=[low, high], capsize=4, label=case)
    ax.set_xticks(list(range(len(sizes))), [f"{n:,} rows" for n in sizes])
    ax.set_ylabel(unit)


def draw_chart(results: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart")
        return None
    scenarios = results["scenarios"]
    fig, axes = plt.subplots(3, 2, figsize=(12, 12))
    ax = axes[0][0]
    per = scenarios.get("requests_per_1000")
    if per:
        cases = list(per["cases"])
        writes = [per["cases"][c]["writes_per_1000"] for c in cases]
        reads = [per["cases"][c]["reads_per_1000"] for c in cases]
        ax.bar(cases, writes, label="writes")
        ax.bar(cases, reads, bottom=writes, label="reads")
        ax.scatter(
            cases, [per["cases"][c]["target"] for c in cases], color="red", marker="_", s=600, label="target"
        )
        ax.legend()
    ax.set_title("1. Requests per 1,000 new contacts")
    tp = scenarios.get("throughput")
    if tp:
        _grouped_bars(axes[0][1], tp["cases"], "rows_per_s", "rows/s")
        axes[0][1].axhline(THROUGHPUT_TARGET, color="red", linestyle="--", label="target at 1M")
        axes[0][1].legend(fontsize="small")
        _grouped_bars(axes[1][0], tp["cases"], "peak_rss_mb", "MB")
        axes[1][0].axhline(RSS_TARGET_MB, color="red", linestyle="--", label="target at 1M")
        axes[1][0].legend(fontsize="small")
    axes[0][1].set_title("3. Rows/s end to end, no limits")
    axes[1][0].set_title("4. Peak RSS of the worker")
    ax = axes[1][1]
    base = scenarios.get("baseline")
    if base:
        services = list(base["services"])
        x = range(len(services))
        ax.bar(
            [i - 0.2 for i in x],
            [base["services"][s]["request_ratio"] for s in services],
            0.4,
            label="fewer requests (x)",
        )
        ax.bar(
            [i + 0.2 for i in x], [base["services"][s]["speedup"] for s in services], 0.4, label="faster (x)"
        )
        ax.set_xticks(list(x), services)
        ax.set_yscale("log")
        ax.axhline(100, color="red", linestyle="--", linewidth=0.8)
        ax.axhline(20, color="orange", linestyle="--", linewidth=0.8)
        ax.legend()
    ax.set_title("6. Against a hand-written per-contact loop")
    if scenarios.get("nights"):
        _night_panels(axes[2][0], axes[2][1], scenarios["nights"])
    axes[2][0].set_title("9. A night's wall against reading the export")
    axes[2][1].set_title("9. Peak RSS of a night")
    m = results["machine"]
    fig.suptitle(
        f"airflow-provider-sequences benchmarks: {m['cpus_usable']} CPUs, {m['memory_mb']:,} MB, "
        f"Python {m['python']}, {results['generated_at']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _night_panels(ratios: Any, memory: Any, nights: dict[str, Any]) -> None:
    """Scenario 9: each case, size and store, its nights over the reference read; peak RSS."""
    labels: list[str] = []
    unchanged: list[float] = []
    changed: list[float] = []
    peaks: list[float] = []
    for case, sizes in nights["cases"].items():
        for size, entry in sizes.items():
            n = int(size)
            shown = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n:,}"
            for store, figures in entry["stores"].items():
                labels.append(f"{case.split('_')[0]} {shown}\n{'PG' if store == 'postgresql' else store}")
                unchanged.append(over_read(figures["unchanged"]))
                changed.append(over_read(figures["changed"]))
                peaks.append(
                    max(figures[night]["peak_rss_mb"] for night in ("first_night", "unchanged", "changed"))
                )
    x = list(range(len(labels)))
    ratios.bar([i - 0.2 for i in x], unchanged, 0.4, label="unchanged night")
    ratios.bar([i + 0.2 for i in x], changed, 0.4, label="next night (1% new at 1M, 0.1% at 10M)")
    ratios.axhline(2.0, color="red", linestyle="--", linewidth=0.8, label="target: unchanged, SQLite")
    ratios.axhline(2.5, color="orange", linestyle="--", linewidth=0.8, label="target: 0.1% at 10M")
    ratios.set_xticks(x, labels, fontsize="x-small")
    ratios.set_ylabel("x the reference read")
    ratios.legend(fontsize="x-small")
    memory.bar(x, peaks)
    memory.axhline(1024, color="red", linestyle="--", linewidth=0.8, label="target at 10M")
    memory.set_xticks(x, labels, fontsize="x-small")
    memory.set_ylabel("MB")
    memory.legend(fontsize="x-small")
