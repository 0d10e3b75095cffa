"""The report dict of one run, from its manifest and its bench artifacts' results.json (no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

from compress.report.decision import (
    BASELINES,
    DEFAULT_MAX_DROP,
    ONNX_INPUT,
    QUALITY_BASIS,
    check_gates,
    decision_rows,
    frontier,
    num,
    ratio,
    recommend,
)
from compress.report.markdown import recommendation_text

DISTILL_KEYS = ("teacher_params", "student_params", "quality_before", "quality_after")


def build_report(run_dir: Path, manifest: dict) -> dict:
    recipe = manifest.get("recipe") or {}
    docs = bench_results(Path(run_dir), manifest)
    gates, select = recipe.get("gates") or {}, recipe.get("select") or {}
    default = headline_of(recipe.get("task"))
    headline, headline_reason = quality_headline(default, docs)
    if select.get("quality"):  # the recipe names the metric it judges (probe_accuracy, say): it wins
        headline, headline_reason = select["quality"], None
    max_drop = next((v for v in (select.get("max_quality_drop"), gates.get("max_quality_drop")) if v is not None),
                    DEFAULT_MAX_DROP)
    prices = {name: (t or {}).get("price_per_hour") for name, t in (recipe.get("targets") or {}).items()}
    rows = decision_rows([row for doc in docs for row in doc["rows"]], headline, max_drop, prices)
    best, why = recommend(rows, select, max_drop)
    onnx_in = teacher_input(manifest) == "onnx"
    basis = "onnx-input" if onnx_in else recipe.get("task")
    text = recommendation_text(best, why, headline)
    return {
        "run": recipe.get("name"), "task": recipe.get("task"), "headline": headline,
        "headline_reason": headline_reason,
        "quality_metric": {"judged": headline, "default": default,
                           "chosen_by": "select.quality" if select.get("quality") else "the task's default"},
        "frontier": frontier(rows, why.get("setting")),
        "baseline": BASELINES.get(basis, BASELINES[None]),
        "quality_basis": QUALITY_BASIS.get(basis, QUALITY_BASIS[None]),
        "teacher_input": teacher_input(manifest),
        "max_quality_drop": max_drop,
        "select": {**select, "max_quality_drop": max_drop},
        "environment": docs[0]["environment"] if docs else {},
        "targets": {name: env for doc in docs for name, env in (doc.get("targets") or {}).items()},
        "settings": docs[0]["settings"] if docs else {},
        "rows": rows,
        "recommendation": best,
        "recommendation_text": text.replace("the teacher in PyTorch fp32", ONNX_INPUT) if onnx_in else text,
        "gates": check_gates(gates, best),
        "distillation": distillation(manifest, headline),
        "accuracy": accuracy_searches(manifest),
        "runtimes": variant_runtimes(manifest),
        "int8_choices": int8_choices(manifest),
        "stages": {name: {k: s.get(k) for k in ("kind", "status", "seconds")}
                   for name, s in (manifest.get("stages") or {}).items()},
        "trust": trust(recipe, manifest),
    }


def teacher_input(manifest: dict) -> str:
    """"onnx" when the recipe's teacher is an ONNX model (the teacher artifact is an onnx bundle), else "pytorch"."""
    teacher = (manifest.get("artifacts") or {}).get("teacher") or {}
    return "onnx" if teacher.get("format") == "onnx" else "pytorch"


def quality_headline(headline: str, docs: list[dict]) -> tuple[str, str | None]:
    """Classification: agreement with the fp32 teacher instead of accuracy when the labels do not fit the model
    (compress/tasks/quality_basis.py), judged on the teacher's fp32 row and the bench's label facts."""
    if headline != "accuracy" or not docs:
        return headline, None
    from compress.tasks.quality_basis import decide

    rows = [r for doc in docs for r in doc["rows"] if r.get("role") == "teacher" and r.get("precision") == "fp32"
            and r.get("status") == "ok" and r.get("quality")]
    rows.sort(key=lambda r: r.get("runtime") != "torch")
    labels = (docs[0].get("settings") or {}).get("labels") or {}
    return decide(headline, rows[0]["quality"] if rows else None, has_labels=labels.get("has_labels", True),
                  data_labels=labels.get("data"), model_labels=labels.get("model"))


def trust(recipe: dict, manifest: dict) -> dict:
    """Whether the model's own Python code could run, and how its weights were read (shown in every report)."""
    teacher = recipe.get("teacher") or {}
    meta = ((manifest.get("artifacts") or {}).get("teacher") or {}).get("metadata") or {}
    return {"trust_remote_code": bool(teacher.get("trust_remote_code")),
            "remote_code": meta.get("remote_code") or [],
            "allow_pickle": bool(teacher.get("allow_pickle")), "weights": meta.get("weights")}


def bench_results(run_dir: Path, manifest: dict) -> list[dict]:
    """Every bench artifact's results.json, each row tagged with the artifact it came from."""
    docs = []
    for artifact in (manifest.get("artifacts") or {}).values():
        if artifact.get("format") == "bench":
            path = Path(artifact["path"])
            path = path if path.is_absolute() else run_dir / path
            doc = json.loads((path / "results.json").read_text(encoding="utf-8"))
            for row in doc["rows"]:
                row["bench"] = artifact["name"]
            docs.append(doc)
    return docs


def headline_of(task: str | None) -> str:
    """The task's headline metric; cosine for a run without a (known) task, as older manifests have."""
    if not task:
        return "cosine"
    try:
        from compress.tasks import get_task

        return get_task(task).HEADLINE
    except (ImportError, KeyError, AttributeError):
        return "cosine"


def distillation(manifest: dict, headline: str) -> dict | None:
    for name, stage in (manifest.get("stages") or {}).items():
        metrics = stage.get("metrics") or {}
        if stage.get("kind") == "distill" and all(k in metrics for k in DISTILL_KEYS):
            before, after = (_pick(metrics[k], headline) for k in ("quality_before", "quality_after"))
            return {"stage": name, "teacher_params": metrics["teacher_params"],
                    "student_params": metrics["student_params"],
                    "params_ratio": ratio(metrics["student_params"], metrics["teacher_params"]),
                    "quality_before": before, "quality_after": after,
                    "gain": after - before if before is not None and after is not None else None,
                    "seconds": stage.get("seconds"),
                    **{k: metrics[k] for k in ("projection", "index_compatible", "index_note", "steps",
                                               "samples_per_s", "train_seconds", "precision") if k in metrics}}
    return None


def accuracy_searches(manifest: dict) -> dict:
    """The quantize stages' accuracy searches, by artifact: budget, steps, nodes kept in higher precision."""
    found = {}
    for stage in (manifest.get("stages") or {}).values():
        if stage.get("kind") != "quantize":
            continue
        for name, metrics in (stage.get("metrics") or {}).items():
            if isinstance(metrics, dict) and isinstance(metrics.get("accuracy"), dict):
                found[name] = metrics["accuracy"]
    return found


def variant_runtimes(manifest: dict) -> dict:
    """Per quantized ONNX artifact: where it runs (standard ONNX, onnxruntime and OpenVINO, onnxruntime only,
    from its operators) and, when it came out larger than the int8-dynamic of the same source, why."""
    artifacts = manifest.get("artifacts") or {}
    metas = {name: a.get("metadata") or {} for name, a in artifacts.items() if a.get("format") == "onnx"}
    dynamic = {m.get("source"): m.get("size_bytes") for m in metas.values() if m.get("precision") == "int8-dynamic"}
    found = {}
    for name, meta in metas.items():
        runtimes = meta.get("runtimes")
        if not isinstance(runtimes, dict):
            continue
        entry = {k: runtimes.get(k) for k in ("standard_onnx", "onnxruntime_only", "note")}
        reference, size = dynamic.get(meta.get("source")), meta.get("size_bytes")
        if meta.get("precision") in ("int8-static", "int4-weight") and reference and size and size > reference:
            entry["larger_than_int8_dynamic"] = {
                "size_bytes": size, "int8_dynamic_bytes": reference,
                "why": (meta.get("scheme_options") or {}).get("size_note") or "no reason recorded"}
        options = meta.get("scheme_options") or {}
        if options.get("settings"):  # int4-weight's algorithm, block, zero points, compute type, vocabulary bits
            entry["settings"] = options["settings"]
        if options.get("form"):  # int8-dynamic's graph form for this CPU (compress/int8_form.py)
            entry["int8_form"] = {"form": options["form"], "why": options.get("form_why") or "no reason recorded"}
        found[name] = entry
    return found


def int8_choices(manifest: dict) -> dict:
    """int8-static of CNNs (compress/quant_cnn.py), by artifact: the equalization and the calibration choices
    tried, with the one kept."""
    found = {}
    for stage in (manifest.get("stages") or {}).values():
        if stage.get("kind") != "quantize":
            continue
        for name, metrics in (stage.get("metrics") or {}).items():
            cnn = metrics.get("options", {}).get("cnn") if isinstance(metrics, dict) else None
            if isinstance(cnn, dict):
                found[name] = cnn
    return found


def _pick(value, headline: str) -> float | None:
    return num(value.get(headline)) if isinstance(value, dict) else num(value)
