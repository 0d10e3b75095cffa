"""The charts of report.html: latency vs quality per provider (pareto.png) and each row's latency distribution.

matplotlib (Agg, no display) is imported only when a chart is drawn. A row's raw samples are found by its
bench id (decision.row_id), so rows that differ only by target, arm or session options keep their own.
"""

from __future__ import annotations

import io

from compress.report.decision import is_recommended, row_id, where

MAX_PANELS = 4  # settings shown side by side in the Pareto plot


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    # No "Software"/date metadata: the same report renders to the same bytes.
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def measured(report: dict) -> list[dict]:
    return [r for r in report.get("rows", []) if r["status"] == "ok" and r.get("p50_ms") is not None
            and r.get("headline") is not None]


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and quality (higher), fastest first."""
    best, out = float("-inf"), []
    for latency, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best:
            out.append((latency, quality))
            best = quality
    return out


def pareto_png(report: dict) -> bytes | None:
    """Latency (p50) vs headline quality, one colour per runtime/provider, one panel per setting."""
    rows = measured(report)
    if not rows:
        return None
    plt = _pyplot()
    settings = list(dict.fromkeys(r["setting"] for r in rows))[:MAX_PANELS]
    groups = sorted({where(r) for r in rows})
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    markers = dict(zip(groups, "osD^vP*Xh<>", strict=False))
    fig, axes = plt.subplots(1, len(settings), figsize=(6.4 * len(settings), 4.6), squeeze=False)
    headline, best = report.get("headline", "quality"), report.get("recommendation")
    for ax, setting in zip(axes[0], settings, strict=True):
        here = [r for r in rows if r["setting"] == setting]
        for group in groups:
            mine = [r for r in here if where(r) == group]
            if not mine:
                continue
            ax.scatter([r["p50_ms"] for r in mine], [r["headline"] for r in mine], s=46, label=group,
                       color=colours[group], marker=markers.get(group, "o"), zorder=3)
            edge = frontier([(r["p50_ms"], r["headline"]) for r in mine])
            if len(edge) > 1:
                ax.step(*zip(*edge, strict=True), where="post", color=colours[group], alpha=0.5, lw=1)
        _labels(ax, here)
        _budget_line(ax, here, report.get("max_quality_drop"))
        chosen = [r for r in here if is_recommended(r, best)]
        if chosen:
            ax.scatter([chosen[0]["p50_ms"]], [chosen[0]["headline"]], s=260, facecolors="none",
                       edgecolors="green", linewidths=2, zorder=4, label="recommended")
        lat = [r["p50_ms"] for r in here]
        if max(lat) > 8 * min(lat):
            ax.set_xscale("log")
        ax.set(xlabel="p50 latency (ms, lower is better)", ylabel=f"{headline} (higher is better)",
               title=f"{setting} (batch/seq len/threads)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.suptitle(f"{report.get('run') or 'run'}: latency vs quality per provider", fontsize=11)
    return _png(fig)


def _labels(ax, rows: list[dict]) -> None:
    """Name every point; near points get their names at different heights, so names do not collide."""
    xs, ys = [r["p50_ms"] for r in rows], [r["headline"] for r in rows]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float, int]] = []
    for r in sorted(rows, key=lambda r: r["p50_ms"]):
        used = {off for x, y, off in placed
                if abs(r["p50_ms"] - x) < 0.12 * dx and abs(r["headline"] - y) < 0.06 * dy}
        offset = next((o for o in (4, -10, 14, -20, 24) if o not in used), 4)
        ax.annotate(r["variant"], (r["p50_ms"], r["headline"]), fontsize=7, xytext=(4, offset),
                    textcoords="offset points")
        placed.append((r["p50_ms"], r["headline"], offset))


def _budget_line(ax, rows: list[dict], max_drop) -> None:
    base = next((r for r in rows if r.get("is_baseline")), None)
    if base is not None and max_drop is not None:
        ax.axhline(base["headline"] - max_drop, color="grey", ls="--", lw=1,
                   label=f"quality budget (drop {max_drop:g})")


def latency_series(report: dict, samples: dict) -> list[tuple[dict, list[list[float]]]]:
    """(row, its own samples per round) for every measured row that has samples, in the chart's order."""
    rows = [r for r in report.get("rows", []) if r["status"] == "ok" and samples.get(row_id(r))]
    rows.sort(key=lambda r: (r["setting"], -(r["p50_ms"] or 0)))
    return [(r, samples[row_id(r)]) for r in rows]


def latency_png(report: dict, samples: dict) -> bytes | None:
    """One box per measured row: every sample over all rounds; dots are the per-round medians."""
    series = latency_series(report, samples)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(series) + 1.3))
    ax.boxplot([[v for rnd in rounds for v in rnd] for _, rounds in series], orientation="horizontal",
               whis=(1, 99), showfliers=True, widths=0.6, flierprops={"markersize": 2, "alpha": 0.4})
    for i, (_, rounds) in enumerate(series, start=1):
        medians = [sorted(rnd)[len(rnd) // 2] for rnd in rounds if rnd]
        ax.scatter(medians, [i] * len(medians), s=12, color="tab:red", zorder=3,
                   label="round medians" if i == 1 else None)
    ax.set_yticks(range(1, len(series) + 1), [f"{r['variant']} · {where(r)} · {r['setting']}" for r, _ in series],
                  fontsize=8)
    ax.set(xlabel="latency per call (ms); whiskers p1-p99", title="latency distribution per variant")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)
