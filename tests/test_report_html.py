"""report.html and pareto.png from a synthetic run (the real results.json / samples.json structure)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from compress import report
from compress.report import charts
from compress.report import html as report_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(variant, p50, cosine, *, precision="fp32", source=None, role="student", size=20.0, batch=1,
        runtime="onnxruntime", provider="CPUExecutionProvider", status="ok"):
    ok = status == "ok"
    return {
        "id": f"{variant}|{provider}|b{batch}|s128|t1", "variant": variant, "role": role, "precision": precision,
        "source": source, "runtime": runtime, "provider": provider, "provider_used": provider if ok else None,
        "status": status, "reason": None if ok else "not available here", "batch_size": batch, "seq_len": 128,
        "threads": 1,
        "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "mean": p50, "stdev": 0.1,
                       "rounds_p50": [p50, p50 * 1.01, p50 * 0.99], "n": 30} if ok else None,
        "throughput": batch * 1000 / p50 if ok else None, "peak_rss_mb": 120.0 if ok else None,
        "size_mb": size, "quality": {"cosine": cosine, "top10_agreement": 0.9} if ok else {},
    }


ROWS = [
    row("teacher", 40.0, 1.0, runtime="torch", provider="cpu", role="teacher", size=90.0),
    row("teacher.onnx", 30.0, 1.0, role="teacher", source="teacher", size=90.0),
    row("student.onnx", 10.0, 0.985, source="student", size=30.0),
    row("student.int8-dynamic.onnx", 6.0, 0.97, precision="int8-dynamic", source="student.onnx", size=8.0),
    row("student.onnx", None, None, provider="CUDAExecutionProvider", status="unavailable"),
    row("teacher", 300.0, 1.0, runtime="torch", provider="cpu", role="teacher", size=90.0, batch=8),
    row("student.onnx", 50.0, 0.985, source="student", size=30.0, batch=8),
]


def make_run(tmp_path, rows=ROWS, samples=True):
    """A run dir with a bench artifact (results.json, samples.json); returns (report, manifest)."""
    bench = tmp_path / "artifacts" / "bench"
    bench.mkdir(parents=True)
    env = {"cpu": {"model": "AMD EPYC", "arch": "x86_64", "cores": 2, "flags": {"avx2": True, "avx512f": False}},
           "os": "Linux", "python": "3.11", "versions": {"onnxruntime": "1.32.0"}}
    settings = {"rounds": 3, "warmup": 5, "min_iterations": 10, "min_seconds": 1.0, "eval_size": 100}
    (bench / "results.json").write_text(json.dumps({"environment": env, "settings": settings, "rows": rows}))
    if samples:
        data = {r["id"]: [[r["latency_ms"]["p50"] * (1 + 0.01 * i) for i in range(10)]] * 3
                for r in rows if r["status"] == "ok"}
        (bench / "samples.json").write_text(json.dumps(data))
    manifest = {
        "recipe_file": "recipes/demo.yaml", "recipe_sha256": "ab" * 32, "compress_version": "0.1.0",
        "versions": {"python": "3.11", "torch": "2.13.0+cpu"},
        "recipe": {"name": "demo", "task": "sentence-embedding", "gates": {"max_quality_drop": 0.02},
                   "teacher": {"source": "org/teacher", "license": "apache-2.0"},
                   "stages": [{"name": "bench", "kind": "bench", "providers": ["cpu", "cuda"]}]},
        "stages": {"bench": {"kind": "bench", "status": "done", "seconds": 12.5, "metrics": {"rows": len(rows)},
                             "artifacts": ["bench"]}},
        "artifacts": {"bench": {"name": "bench", "path": "artifacts/bench", "format": "bench", "sha256": "x",
                                "metadata": {}}},
    }
    return report.build_report(tmp_path, manifest), manifest


def test_render_html_writes_self_contained_page_and_png(tmp_path):
    rep, manifest = make_run(tmp_path)

    path = report_html.render_html(tmp_path, rep, manifest)

    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    assert (tmp_path / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    # Nothing is fetched: every src/href is a data URI or an in-page anchor.
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert links and all(link.startswith(("data:", "#")) for link in links), links
    assert "<link" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 2  # the Pareto plot and the latency distribution
    for variant in {r["variant"] for r in ROWS}:
        assert f'data-variant="{variant}"' in page
    assert "recipes/demo.yaml" in page and "ab" * 32 in page and "AMD EPYC" in page and "avx2" in page
    assert not list(tmp_path.glob(".tmp-*"))


def test_render_html_marks_recommendation_and_keeps_numbers_sortable(tmp_path):
    rep, manifest = make_run(tmp_path)

    page = report_html.render_html(tmp_path, rep, manifest).read_text(encoding="utf-8")

    best = re.search(r'<tr class="best" data-variant="([^"]+)"', page)
    assert best and best.group(1) == rep["recommendation"]["variant"] == "student.onnx"
    assert 'data-v="6.0"' in page  # p50 of the int8 student, raw for sorting
    assert 'data-v="">-</td>' in page  # the unavailable CUDA row has no p50


def test_render_html_without_measured_rows_writes_no_png(tmp_path):
    rows = [row("student.onnx", None, None, provider="CUDAExecutionProvider", status="unavailable")]
    rep, manifest = make_run(tmp_path, rows, samples=False)

    page = report_html.render_html(tmp_path, rep, manifest).read_text(encoding="utf-8")

    assert not (tmp_path / "pareto.png").exists()
    assert "nothing to plot" in page and "No raw latency samples" in page
    assert 'data-variant="student.onnx"' in page


def test_render_html_escapes_names(tmp_path):
    rows = [row("teacher", 40.0, 1.0, runtime="torch", provider="cpu", role="teacher"),
            row("<script>alert(1)</script>", 10.0, 0.99)]
    rep, manifest = make_run(tmp_path, rows)

    page = report_html.render_html(tmp_path, rep, manifest).read_text(encoding="utf-8")

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("points, expected", [
    ([(1, 0.9), (2, 0.95), (3, 0.94), (4, 1.0)], [(1, 0.9), (2, 0.95), (4, 1.0)]),
    ([(5, 1.0), (1, 1.0)], [(1, 1.0)]),
    ([(1, 0.5)], [(1, 0.5)]),
    ([], []),
])
def test_frontier_keeps_points_nothing_beats(points, expected):
    assert charts.frontier(points) == expected


def test_read_samples_keys_match_report_rows(tmp_path):
    rep, manifest = make_run(tmp_path)

    samples = report_html.read_samples(tmp_path, manifest)

    ok = [r for r in rep["rows"] if r["status"] == "ok"]
    assert {report.row_id(r) for r in ok} == set(samples)


# Rows that differ from the local row only by machine, provider request or session option: each has its own id
# (made by the bench engine) and must show its own samples, never the local row's.
LOCAL_ID = "student.int8-dynamic.onnx|CPUExecutionProvider|b1|s128|t1"
OWN_SAMPLES = [
    # (case, row fields over the local int8 row, the bench's id of the row, its samples per round)
    ("local", {}, LOCAL_ID, [[6.0, 6.1, 6.2]]),
    ("ssh target", {"target": "pi"}, LOCAL_ID + "|@pi", [[31.0, 32.0, 33.0]]),
    ("arm", {"provider_request": "arm"}, "student.int8-dynamic.onnx|arm|b1|s128|t1", [[47.0, 48.0, 49.0]]),
    ("opt-basic", {"graph_optimization": "basic"}, LOCAL_ID + "|opt-basic", [[8.0, 8.5, 9.0]]),
]
SAMPLE_LINE = re.compile(r'<tr data-id="([^"]+)">(?:<td>[^<]*</td>){3}<td class=num>\d+</td>'
                         r"<td class=num>([\d.]+)</td><td class=num>([\d.]+)</td><td class=num>([\d.]+)</td></tr>")


def own_samples_page(tmp_path) -> str:
    """report.html of a run holding every row of OWN_SAMPLES, each with its own samples in samples.json."""
    local = row("student.int8-dynamic.onnx", 6.1, 0.97, precision="int8-dynamic", source="student.onnx", size=8.0)
    rows = [row("teacher", 40.0, 1.0, runtime="torch", provider="cpu", role="teacher")]
    rows += [{**local, **fields, "id": rid, "latency_ms": {**local["latency_ms"], "p50": own[0][1]}}
             for _, fields, rid, own in OWN_SAMPLES]
    rep, manifest = make_run(tmp_path, rows)
    samples = {rid: own for _, _, rid, own in OWN_SAMPLES}
    (tmp_path / "artifacts" / "bench" / "samples.json").write_text(json.dumps(samples))
    return report_html.render_html(tmp_path, rep, manifest).read_text(encoding="utf-8")


@pytest.mark.parametrize("case, fields, rid, own", OWN_SAMPLES, ids=[c[0] for c in OWN_SAMPLES])
def test_report_html_shows_each_rows_own_samples(tmp_path, case, fields, rid, own):
    page = own_samples_page(tmp_path)

    shown = {m.group(1): [float(v) for v in m.groups()[1:]] for m in SAMPLE_LINE.finditer(page)}

    flat = sorted(v for rnd in own for v in rnd)
    assert shown.get(rid) == [flat[0], flat[len(flat) // 2], flat[-1]], (case, shown)
    assert len(shown) == len(OWN_SAMPLES)  # one line of samples per row


@pytest.mark.parametrize("fields, expected", [
    ({}, "m.onnx|CPUExecutionProvider|b1|s128|t1"),
    ({"target": "pi"}, "m.onnx|CPUExecutionProvider|b1|s128|t1|@pi"),
    ({"provider_request": "arm"}, "m.onnx|arm|b1|s128|t1"),
    ({"graph_optimization": "basic", "execution_mode": "parallel", "inter_op_threads": 2},
     "m.onnx|CPUExecutionProvider|b1|s128|t1|i2|opt-basic|parallel"),
])
def test_row_id_rebuilds_the_bench_id_when_a_report_has_none(fields, expected):
    old = {"variant": "m.onnx", "provider": "CPUExecutionProvider", "batch_size": 1, "seq_len": 128, "threads": 1,
           **fields}

    assert report.row_id(old) == expected
    assert report.row_id({**old, "id": "given"}) == "given"


# ---------------------------------------------------------------- a real browser

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def dump_dom(url: str, profile) -> str:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--dump-dom", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("sort, key", [
    ("size_mb:desc", lambda r: -(r["size_mb"] or 0)),
    ("p50_ms:asc", lambda r: (r["p50_ms"] is None, r["p50_ms"] or 0)),
])
def test_render_html_sorts_table_in_headless_chromium(tmp_path, sort, key):
    rep, manifest = make_run(tmp_path)
    page = report_html.render_html(tmp_path, rep, manifest)

    dom = dump_dom(f"{page.as_uri()}#sort={sort}", tmp_path / "profile")

    table = re.search(r"<table[^>]*id=\"decision\"[^>]*>", dom)
    assert table and 'data-sortable="ready"' in table.group(0) and f'data-sorted-by="{sort}"' in table.group(0)
    shown = re.findall(r'<tr class="[^"]*" data-variant="([^"]+)"', dom)
    assert sorted(shown) == sorted(r["variant"] for r in rep["rows"])
    # Stable sort: rows with equal keys keep the report's order, as Python's sort does.
    assert shown == [r["variant"] for r in sorted(rep["rows"], key=key)]


def test_accuracy_section_lists_kept_nodes_and_every_step():
    search = {"max_quality_drop": 0.01, "drop": 0.004, "within_budget": True, "reason": "within budget",
              "kept_precision": "fp32", "excluded_nodes": ["/layer.1/MatMul", "/layer.1/<b>"], "best_step": 1,
              "steps": [{"step": 0, "excluded_groups": [], "excluded_nodes": 0, "quality": 0.95, "drop": 0.05,
                         "latency_ms": 4.0},
                        {"step": 1, "excluded_groups": ["layer.1"], "excluded_nodes": 2, "quality": 0.996,
                         "drop": 0.004, "latency_ms": 4.4}]}

    html = report_html.accuracy_section({"headline": "cosine", "accuracy": {"student.int8-static.onnx": search}})

    assert "<h2>Accuracy search</h2>" in html and "/layer.1/MatMul" in html and "&lt;b&gt;" in html
    assert html.count("<tr>") == 3 and "1 (kept)" in html and "within budget" in html
    assert report_html.accuracy_section({"accuracy": {}}) == ""
