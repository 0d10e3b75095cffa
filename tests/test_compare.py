"""`compress compare OLD NEW`: per-variant deltas; only changes beyond the threshold and the noise count."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def report(rows: dict[str, list[float]]) -> dict:
    return {"rows": [
        {"variant": name, "runtime": "onnxruntime", "provider": "CPUExecutionProvider", "setting": "b1/s128/t1",
         "status": "ok", "p50_ms": sorted(rounds)[len(rounds) // 2], "rounds_p50_ms": rounds, "headline": 0.99}
        for name, rounds in rows.items()]}


@pytest.mark.parametrize(
    "new_rounds, verdict",
    [
        ([10.1, 9.9, 10.0], "same"),  # identical within noise
        ([20.0, 20.4, 19.8], "slower"),  # work doubled
        ([11.5, 9.0, 10.5], "same"),  # +5% median and overlapping rounds: noise
        ([5.0, 5.1, 4.9], "faster"),
    ],
)
def test_compare_reports_only_regressions_beyond_noise(tmp_path, new_rounds, verdict):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(report({"model.int8.onnx": [10.0, 10.2, 9.8]})))
    new.write_text(json.dumps(report({"model.int8.onnx": new_rounds})))

    proc = subprocess.run([sys.executable, "-m", "compress.cli", "compare", str(old), str(new)],
                          capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""})

    assert proc.returncode == (1 if verdict == "slower" else 0), proc.stderr
    assert verdict in proc.stdout
    regressions = proc.stdout.strip().splitlines()[-1]
    assert ("model.int8.onnx" in regressions) == (verdict == "slower")


def test_compare_names_a_missing_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "compare", str(tmp_path / "a"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr


# ---------------------------------------------------------------- on real runs of a small recipe

RECIPE = """\
version: 1
name: compare-demo
task: sentence-embedding
teacher: {source: model, license: apache-2.0}
data: {source: texts.csv, text_field: text, eval_size: 8}
stages:
  - kind: export
    parity_texts: 4
  - kind: quantize
    schemes: [int8-dynamic]
  - kind: bench
    batch_sizes: [1]
    seq_lens: [64]
    warmup: 3
    min_iterations: 20
    min_seconds: 0.3
    rounds: 5
    eval_size: 8
"""


def double_work(path):
    """Rewrite an ONNX model so it computes everything twice (a second copy with its own weights) and averages.

    The outputs stay the same; the work doubles. The copy's initializers get new names so that onnxruntime's
    common-subexpression elimination cannot merge the two copies back into one.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inputs = {i.name for i in graph.input}
    rename = {name: f"{name}__twice" for name in [t.name for t in graph.initializer]
              + [o for n in graph.node for o in n.output if o]}
    graph.initializer.extend(onnx.helper.make_tensor(rename[t.name], t.data_type, t.dims,
                                                     onnx.numpy_helper.to_array(t).tobytes(), raw=True)
                             for t in list(graph.initializer))
    copies = []
    for index, node in enumerate(graph.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.name or index}__twice"
        copy.input[:] = [x if x in inputs or not x else rename[x] for x in node.input]
        copy.output[:] = [rename[x] if x else x for x in node.output]
        copies.append(copy)
    graph.node.extend(copies)
    for output in graph.output:  # out = (out_a + out_b) / 2
        first, second = f"{output.name}__once", rename[output.name]
        for node in graph.node:
            node.output[:] = [first if x == output.name else x for x in node.output]
            node.input[:] = [first if x == output.name else x for x in node.input]
        graph.node.extend([onnx.helper.make_node("Add", [first, second], [f"{output.name}__sum"]),
                           onnx.helper.make_node("Mul", [f"{output.name}__sum", "__half"], [output.name])])
    graph.initializer.append(onnx.numpy_helper.from_array(__import__("numpy").array(0.5, "float32"), "__half"))
    onnx.save(model, str(path))


def run_recipe(workdir, out, *extra):
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", "recipe.yaml", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=workdir, env={**__import__("os").environ,
                                                                             "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def compare_runs(old, new):
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "compare", str(old), str(new)],
                          capture_output=True, text=True, env={"COLUMNS": "250", "PATH": ""})
    regressions = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == (0 if regressions.endswith(": none") else 1), proc.stderr
    return regressions


@pytest.mark.slow
def test_compare_on_real_runs_finds_only_the_variant_made_slower(tmp_path):
    import shutil

    from conftest import make_tiny_bert

    make_tiny_bert(tmp_path / "model", layers=4, hidden=128)
    (tmp_path / "texts.csv").write_text("text\n" + "".join(f"review number {i} of a film, fine and moving\n"
                                                             for i in range(40)))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    first, second = tmp_path / "first", tmp_path / "second"
    run_recipe(tmp_path, first)
    run_recipe(tmp_path, second)
    assert compare_runs(first, second).endswith("none")  # the same recipe twice: no regression

    # A change that makes one variant do twice the work: its file is rewritten and the manifest re-hashed,
    # so the runner keeps export and quantize and re-runs only bench.
    slowed = tmp_path / "slowed"
    shutil.copytree(first, slowed)
    manifest = json.loads((slowed / "manifest.json").read_text())
    artifact = manifest["artifacts"]["teacher.int8-dynamic.onnx"]
    path = slowed / artifact["path"]
    from compress.artifacts import model_file

    onnx_file = path if path.is_file() else model_file(path)  # onnx/model.onnx (copytree made the root link a file)
    double_work(onnx_file)
    from compress.artifacts import sha256_path

    artifact["sha256"] = sha256_path(path)
    (slowed / "manifest.json").write_text(json.dumps(manifest))
    report = run_recipe(tmp_path, slowed)
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["teacher.int8-dynamic.onnx"]["headline"] > 0.99  # same outputs, twice the work

    regressions = compare_runs(first, slowed)
    assert "teacher.int8-dynamic.onnx" in regressions, regressions
    assert "teacher.onnx " not in regressions and "teacher torch" not in regressions


def with_teacher(rows: dict[str, list[float]], teacher: list[float]) -> dict:
    doc = report(rows)
    doc["rows"].append({"variant": "teacher", "runtime": "torch", "provider": "cpu", "setting": "b1/s128/t1",
                        "status": "ok", "p50_ms": sorted(teacher)[1], "rounds_p50_ms": teacher, "headline": 1.0,
                        "is_baseline": True})
    return doc


@pytest.mark.parametrize(
    "variant_rounds, teacher_rounds, verdict",
    [
        ([14.0, 14.3, 13.9], [56.0, 57.0, 55.5], "same (the teacher slowed alike"),  # a busier machine
        ([20.0, 20.4, 19.8], [40.0, 40.5, 39.8], "slower"),  # only the variant doubled
        ([20.0, 20.4, 19.8], [30.0, 30.5, 29.8], "slower"),  # the teacher got faster, the variant slower
        ([5.0, 5.1, 4.9], [40.0, 40.1, 39.9], "faster"),
    ],
)
def test_compare_judges_variants_relative_to_the_teacher_of_the_same_run(variant_rounds, teacher_rounds, verdict):
    from compress.compare import compare

    old = with_teacher({"model.int8.onnx": [10.0, 10.2, 9.8]}, [40.0, 40.4, 39.6])
    new = with_teacher({"model.int8.onnx": variant_rounds}, teacher_rounds)

    entry = next(e for e in compare(new, old, 0.10) if e["row"]["variant"] == "model.int8.onnx")

    assert entry["relative_delta"] is not None and entry["verdict"].startswith(verdict)
