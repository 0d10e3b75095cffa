"""report.html: the report of a run as one self-contained page.

The page needs no network: CSS and the table-sorting script are inline, the charts are PNG data URIs.
It shows the decision table (click a header to sort; `report.html#sort=p50_ms:desc` sorts on load),
latency vs quality per provider (the Pareto plot of charts.py, also saved as pareto.png), model sizes, the latency
distribution of every variant (from the bench's raw samples), the environment and the recipe.
Everything comes from the report dict, the manifest and the bench artifacts: no model is loaded.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from compress.artifacts import atomic_path, write_text_atomic
from compress.report.charts import latency_png, latency_series, pareto_png
from compress.report.decision import drop_text, is_recommended, real_lengths_note, row_id, where
from compress.report.markdown import frontier_lines, gate_interval, metric_line
from compress.report.model_card import provenance as provenance_of

# (key, header, kind, cell): kind "num" sorts numerically on the cell's data-v value.
COLUMNS = (
    ("variant", "variant", "text"), ("where", "runtime/provider", "text"), ("precision", "precision", "text"),
    ("setting", "setting", "text"), ("status", "status", "text"), ("size_mb", "size MB", "num"),
    ("size_ratio", "size x", "num"), ("p50_ms", "p50 ms", "num"), ("p90_ms", "p90 ms", "num"),
    ("p99_ms", "p99 ms", "num"), ("ttft_ms", "TTFT ms", "num"), ("tokens_per_s", "tokens/s", "num"),
    ("speedup", "speed-up", "num"), ("cost_per_million", "$ / M inf.", "num"),
    ("cost_saving", "saving", "num"), ("throughput", "per s", "num"),
    ("peak_rss_mb", "peak RSS MB", "num"), ("headline", "{headline}", "num"), ("other", "other quality", "text"),
    ("quality_drop", "drop", "num"), ("flags", "flags", "text"),
)
FORMATS = {"size_mb": ".1f", "size_ratio": ".2f", "p50_ms": ".2f", "p90_ms": ".2f", "p99_ms": ".2f", "ttft_ms": ".1f",
           "tokens_per_s": ".1f", "speedup": ".2f", "cost_per_million": ".4f", "cost_saving": ".0%",
           "throughput": ".1f", "peak_rss_mb": ".0f", "headline": ".4f", "quality_drop": ".4f"}


def render_html(run_dir: Path, report: dict, manifest: dict) -> Path:
    """Write pareto.png (when a variant was measured) and report.html atomically; return report.html."""
    run_dir = Path(run_dir)
    samples = read_samples(run_dir, manifest)
    pareto = pareto_png(report)
    if pareto is not None:
        with atomic_path(run_dir / "pareto.png") as tmp:
            tmp.write_bytes(pareto)
    page = build_html(report, manifest, pareto=pareto, latency=latency_png(report, samples), samples=samples)
    write_text_atomic(run_dir / "report.html", page)
    return run_dir / "report.html"


def read_samples(run_dir: Path, manifest: dict) -> dict[str, list[list[float]]]:
    """Raw latency samples (ms) by bench row id, one list per round, from every bench artifact."""
    found: dict[str, list[list[float]]] = {}
    for artifact in (manifest.get("artifacts") or {}).values():
        if artifact.get("format") != "bench":
            continue
        path = Path(artifact["path"])
        path = (path if path.is_absolute() else Path(run_dir) / path) / "samples.json"
        if path.is_file():
            found.update(json.loads(path.read_text(encoding="utf-8")))
    return found


# ---------------------------------------------------------------- HTML


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return "<p class=note>No variant was measured: nothing to plot.</p>"
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _cell(row: dict, key: str, headline: str) -> str:
    if key == "where":
        return f"<td>{esc(where(row))}</td>"
    if key == "other":
        text = ", ".join(f"{k} {v:.3f}" for k, v in (row.get("quality") or {}).items()
                         if k != headline and v is not None)
        return f"<td>{esc(text or '-')}</td>"
    if key == "flags":
        return f"<td class=flags>{esc('; '.join(row.get('flags') or []))}</td>"
    value = row.get(key)
    if key in FORMATS:
        if value is None:
            return '<td class=num data-v="">-</td>'
        if key == "quality_drop" and row.get("drop_ci"):  # sorted by the drop, shown with its 95% interval
            return f'<td class=num data-v="{value!r}">{esc(drop_text(row))}</td>'
        suffix = "x" if key in ("size_ratio", "speedup") else ""
        return f'<td class=num data-v="{value!r}">{format(value, FORMATS[key])}{suffix}</td>'
    return f"<td>{esc(value if value is not None else '-')}</td>"


def frontier_section(report: dict) -> str:
    """The frontier list of report.md (per speed-up band, the best variant by the judged metric) as HTML."""
    lines = frontier_lines(report)
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line[2:])}</li>" for line in lines if line.startswith("- "))
    return f"<h2>Frontier</h2><p class=note>{esc(lines[4])}</p><ul>{items}</ul>"


def decision_table(report: dict) -> str:
    headline, best = report.get("headline", "quality"), report.get("recommendation")
    generation = any(r.get("tokens_per_s") is not None for r in report.get("rows", []))  # a causal LM's bench
    columns = [c for c in COLUMNS if generation or c[0] not in ("ttft_ms", "tokens_per_s")]
    head = "".join(f'<th data-key="{key}" data-type="{kind}" tabindex=0>{esc(title.format(headline=headline))}'
                   "</th>" for key, title, kind in columns)
    body = []
    for row in report.get("rows", []):
        cls = "best" if is_recommended(row, best) else ("off" if row["status"] != "ok" else "")
        cells = "".join(_cell(row, key, headline) for key, _, _ in columns)
        body.append(f'<tr class="{cls}" data-variant="{esc(row["variant"])}">{cells}</tr>')
    return (f'<table id=decision class=sortable><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def size_bars(report: dict) -> str:
    sizes = {}
    for row in report.get("rows", []):
        if row.get("size_mb") is not None:
            sizes.setdefault(row["variant"], (row["size_mb"], row.get("size_ratio")))
    if not sizes:
        return "<p class=note>No sizes recorded.</p>"
    top = max(size for size, _ in sizes.values()) or 1.0
    bars = [f'<div class=bar><span class=label>{esc(name)}</span><span class=track><span class=fill '
            f'style="width:{100 * size / top:.1f}%"></span></span><span class=value>{size:.1f} MB'
            f'{f" ({ratio:.2f}x)" if ratio is not None else ""}</span></div>'
            for name, (size, ratio) in sorted(sizes.items(), key=lambda kv: -kv[1][0])]
    return "<div class=bars>" + "".join(bars) + "</div>"


def _kv(pairs) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs if v not in (None, "", []))
    return f"<table class=kv>{rows}</table>"


def environment(report: dict, manifest: dict) -> str:
    env, settings = report.get("environment") or {}, report.get("settings") or {}
    cpu = env.get("cpu") or {}
    versions = {**(manifest.get("versions") or {}), **(env.get("versions") or {})}
    flags = ", ".join(k for k, v in (cpu.get("flags") or {}).items() if v)
    method = (f"{settings.get('rounds', '?')} interleaved rounds, each >= {settings.get('min_iterations', '?')} "
              f"runs and >= {settings.get('min_seconds', '?')} s after {settings.get('warmup', '?')} warm-up "
              f"runs; quality on {settings.get('eval_size', '?')} held-out texts") if settings else None
    if method and real_lengths_note(report.get("rows") or []):
        method += "; " + real_lengths_note(report.get("rows") or [])
    return _kv([("CPU", f"{cpu.get('model', '?')} ({cpu.get('arch', env.get('machine', '?'))}, "
                        f"{cpu.get('cores', env.get('cpu_count', '?'))} cores)" if env else None),
                ("CPU features", flags), ("OS", env.get("os") or versions.get("platform")),
                ("Python", env.get("python") or versions.get("python")),
                ("libraries", ", ".join(f"{k} {v}" for k, v in versions.items()
                                        if k not in ("python", "platform") and v)),
                ("method", method), ("baseline", report.get("baseline"))])


def recipe_section(manifest: dict) -> str:
    import yaml

    recipe = manifest.get("recipe") or {}
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True) if recipe else "(no recipe in the manifest)"
    stages = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(s.get('kind'))}</td><td>{esc(s.get('status'))}</td>"
        f"<td class=num>{esc(s.get('seconds'))}</td><td><details><summary>metrics</summary><pre>"
        f"{esc(json.dumps(s.get('metrics') or {}, indent=1))}</pre></details></td></tr>"
        for name, s in (manifest.get("stages") or {}).items())
    return (_kv([("recipe file", manifest.get("recipe_file")), ("recipe sha256", manifest.get("recipe_sha256")),
                 ("compress", manifest.get("compress_version"))])
            + f"<pre class=recipe>{esc(text)}</pre>"
            + "<h3>Stages</h3><table><thead><tr><th>stage</th><th>kind</th><th>status</th><th>seconds</th>"
            + f"<th></th></tr></thead><tbody>{stages}</tbody></table>")


def _summary(report: dict, manifest: dict) -> str:
    gates = report.get("gates") or {"checks": []}
    parts = [f"<p class=rec><b>Recommendation.</b> {esc(report.get('recommendation_text'))}</p>"]
    if report.get("headline_reason"):
        parts.append(f"<p><b>Quality basis.</b> The headline is {esc(report.get('headline'))}: "
                     f"{esc(report['headline_reason'])}.</p>")
    if gates["checks"]:
        items = "".join(f"<li>{esc(c['gate'])}: {esc(c['value'] if c['value'] is None else round(c['value'], 4))}"
                        f"{esc(gate_interval(c))} vs {esc(c['threshold'])} ({'pass' if c['passed'] else 'fail'})</li>"
                        for c in gates["checks"])
        verdict = "passed" if gates["passed"] else "FAILED"
        parts.append(f"<p class=\"gates {verdict.lower()}\"><b>Gates: {verdict}.</b></p><ul>{items}</ul>")
    else:
        parts.append("<p><b>Gates:</b> none set in the recipe.</p>")
    dist = report.get("distillation")
    if dist:
        parts.append(f"<p><b>Distillation.</b> student {dist['student_params']:,} parameters "
                     f"({dist['params_ratio']:.2f}x the teacher's {dist['teacher_params']:,}); "
                     f"{esc(report.get('headline'))} before {_f(dist['quality_before'])}, after "
                     f"{_f(dist['quality_after'])}.</p>")
    provenance = provenance_of(manifest) if (manifest.get("artifacts") or {}).get("teacher") else {}
    if provenance.get("message"):
        parts.append(f"<p><b>Licence.</b> {esc(provenance['message'])}</p>")
    return "".join(parts)


def samples_table(report: dict, samples: dict) -> str:
    """The numbers behind the latency chart, per row as text: what each box was drawn from."""
    series = latency_series(report, samples)
    if not series:
        return ""
    body = "".join(
        f'<tr data-id="{esc(row_id(r))}"><td>{esc(r["variant"])}</td><td>{esc(where(r))}</td><td>{esc(r["setting"])}'
        f"</td><td class=num>{len(flat)}</td><td class=num>{min(flat):.3f}</td>"
        f"<td class=num>{sorted(flat)[len(flat) // 2]:.3f}</td><td class=num>{max(flat):.3f}</td></tr>"
        for r, flat in ((r, [v for rnd in rounds for v in rnd]) for r, rounds in series) if flat)
    return ("<details class=samples><summary>raw samples per row</summary><table><thead><tr><th>variant</th>"
            "<th>runtime/provider</th><th>setting</th><th>samples</th><th>min ms</th><th>median ms</th>"
            f"<th>max ms</th></tr></thead><tbody>{body}</tbody></table></details>")


def accuracy_section(report: dict) -> str:
    """Per searched artifact: the nodes kept in higher precision and what each exclusion step bought."""
    searches = report.get("accuracy") or {}
    if not searches:
        return ""
    headline = esc(report.get("headline", "quality"))
    parts = ["<h2>Accuracy search</h2>"]
    for name, acc in searches.items():
        kept = acc.get("excluded_nodes") or []
        verdict = "within budget" if acc.get("within_budget") else "NOT within budget"
        rows = "".join(
            f"<tr><td>{s['step']}{' (kept)' if s['step'] == acc.get('best_step') else ''}</td>"
            f"<td>{esc(', '.join(s['excluded_groups']) or '-')}</td><td class=num>{s['excluded_nodes']}</td>"
            f"<td class=num>{_f(s.get('quality'))}</td><td class=num>{_f(s.get('drop'))}</td>"
            f"<td class=num>{s['latency_ms']:.2f}</td></tr>" for s in acc.get("steps") or [])
        parts.append(
            f"<h3>{esc(name)}</h3><p>{headline} drop budget {esc(acc.get('max_quality_drop'))}: reached "
            f"{_f(acc.get('drop'))}, {verdict} ({esc(acc.get('reason'))}). Kept in "
            f"{esc(acc.get('kept_precision'))}: {esc(', '.join(kept) or 'none')}.</p>"
            f"<table><thead><tr><th>step</th><th>excluded groups</th><th>nodes kept</th><th>{headline}</th>"
            f"<th>drop</th><th>p50 ms</th></tr></thead><tbody>{rows}</tbody></table>")
    return "".join(parts)


def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def build_html(report: dict, manifest: dict, pareto: bytes | None = None, latency: bytes | None = None,
               samples: dict | None = None) -> str:
    title = f"compress report: {report.get('run') or 'run'}"
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head><body>
<h1>{esc(title)}</h1>
{_summary(report, manifest)}
<h2>Decision table</h2>
<p class=note>Speed-up and quality drop are against {esc(report.get('baseline'))}. Click a header to sort.</p>
<p class=note>{esc(metric_line(report))}</p>
<div class=scroll>{decision_table(report)}</div>
{frontier_section(report)}
<h2>Latency vs quality</h2>{_img(pareto, "Pareto plot of latency against quality per provider")}
<h2>Model size</h2>{size_bars(report)}
<h2>Latency distribution</h2>{_img(latency, "latency distribution per variant") if latency else
                             "<p class=note>No raw latency samples in the bench artifacts.</p>"}
{samples_table(report, samples or {})}
{accuracy_section(report)}
<h2>Environment</h2>{environment(report, manifest)}
<h2>Recipe</h2>{recipe_section(manifest)}
<script>{SCRIPT}</script>
</body></html>
"""


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;
padding:0 16px;color:#1d1d1f}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;background:#f5f5f7;position:sticky;top:0;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td:first-child{white-space:nowrap}tr.best{background:#e6f6e6;font-weight:600}tr.off{color:#999}td.flags{color:#a15c00;max-width:320px}
.scroll{overflow-x:auto}.note{color:#666}.rec{font-size:15px}.gates.failed{color:#b00020}
img{max-width:100%;height:auto}pre{background:#f7f7f9;padding:10px;overflow-x:auto;font-size:12px}
.bars .bar{display:flex;align-items:center;gap:8px;margin:3px 0}.bars .label{width:260px;text-align:right;
overflow:hidden;text-overflow:ellipsis;white-space:nowrap}.bars .track{flex:1;background:#f0f0f3;height:14px;
max-width:640px}.bars .fill{display:block;height:100%;background:#4c78a8}.bars .value{width:150px}
table.kv th{background:none;width:160px}
"""

# Sorts the decision table by a clicked header (again: reversed); values missing sort last either way.
# `#sort=<key>[:asc|desc]` in the address sorts on load; data-sortable="ready" says the script ran.
SCRIPT = """
(function () {
  var table = document.getElementById('decision');
  if (!table) return;
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function value(row, i, numeric) {
    var cell = row.cells[i], v = cell.getAttribute('data-v');
    if (numeric) return v === null || v === '' ? null : parseFloat(v);
    return cell.textContent.toLowerCase();
  }
  function sortBy(i, dir) {
    var numeric = heads[i].getAttribute('data-type') === 'num', body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i, numeric), y = value(b, i, numeric);
      if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads.forEach(function (h) { h.removeAttribute('aria-sort'); });
    heads[i].setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
    table.setAttribute('data-sorted-by', heads[i].getAttribute('data-key') + ':' + (dir > 0 ? 'asc' : 'desc'));
  }
  heads.forEach(function (h, i) {
    function go() { sortBy(i, h.getAttribute('aria-sort') === 'ascending' ? -1 : 1); }
    h.addEventListener('click', go);
    h.addEventListener('keydown', function (e) { if (e.key === 'Enter') go(); });
  });
  var m = /sort=([\\w-]+)(?::(asc|desc))?/.exec(location.hash);
  if (m) {
    heads.forEach(function (h, i) { if (h.getAttribute('data-key') === m[1]) sortBy(i, m[2] === 'desc' ? -1 : 1); });
  }
  table.setAttribute('data-sortable', 'ready');
})();
"""
