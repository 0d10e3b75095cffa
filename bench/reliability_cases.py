"""The cases of bench/reliability_inputs.py (issue 20): each prepares a folder as a user would leave it, names the
`compress` command to run there, and what must come of it (exit code, message, files changed or gone)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.reliability_inputs import TIMEOUT, Case, Inputs, env

# ---------------------------------------------------------------- preparing the cases


def _recipe(work: Path, inputs: Inputs, name: str = "r.yaml", **swap: str) -> Path:
    """The finished run's recipe, with paths swapped (e.g. the model folder for a damaged copy)."""
    text = inputs.recipe.read_text()
    for old, new in swap.items():
        text = text.replace(str(getattr(inputs, old)), new)
    path = work / name
    path.write_text(text)
    return path


def _model_copy(work: Path, inputs: Inputs, damage: Callable[[Path], None]) -> list[str]:
    model = work / "model"
    shutil.copytree(inputs.model, model)
    damage(model)
    return ["run", str(_recipe(work, inputs, model=str(model))), "--out", str(work / "run")]


def _data_copy(work: Path, inputs: Inputs, name: str, text: str, label: bool = True) -> list[str]:
    data = work / name
    data.write_text(text)
    recipe = _recipe(work, inputs, texts=str(data))
    if label:
        recipe.write_text(recipe.read_text().replace("eval_size: 16}", "eval_size: 16, label_field: label}"))
    return ["run", str(recipe), "--out", str(work / "run")]


def _folder_with(work: Path, name: str, files: dict[str, str]) -> Path:
    folder = work / name
    folder.mkdir()
    for rel, text in files.items():
        (folder / rel).write_text(text)
    return folder


def _done_copy(work: Path, inputs: Inputs) -> Path:
    run = work / "run"
    shutil.copytree(inputs.done, run, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    return run


def _no_weights(model: Path) -> None:
    (model / "model.safetensors").unlink()


def _truncate(model: Path) -> None:
    with open(model / "model.safetensors", "r+b") as handle:
        handle.truncate(10_000)


def _no_tokenizer(model: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt"):
        (model / name).unlink()


def _model_type(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "bert-of-my-own"}))


def _link_out(model: Path) -> None:
    outside = model.parent / "outside-secret.json"
    outside.write_text((model / "tokenizer.json").read_text())
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(outside)


def _missing_layer(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".layer.1." not in k}, model / "model.safetensors",
              metadata={"format": "pt"})


def _labelled(rows: list[tuple[str, str]]) -> str:
    return "text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)


TEXTS = [f"the movie was {w} and {v}" for w in ("good", "bad", "fine", "dull", "great", "flat") for v in
         ("long", "short", "loud", "quiet", "slow", "fast")]


def _symlinked_artifact(work: Path, inputs: Inputs) -> list[str]:
    run = _done_copy(work, inputs)
    elsewhere = work / "elsewhere-bench"
    shutil.move(run / "artifacts" / "bench", elsewhere)
    (run / "artifacts" / "bench").symlink_to(elsewhere, target_is_directory=True)
    return ["report", str(run)]


def _user_tmp(work: Path, inputs: Inputs) -> list[str]:
    run = _done_copy(work, inputs)
    (run / ".tmp-notes.txt").write_text("the user's own notes\n")
    (run / "artifacts" / ".tmp-mine").write_text("also the user's\n")
    return ["run", str(_recipe(work, inputs)), "--out", str(run)]


def _report(inputs: Inputs) -> dict:
    return json.loads((inputs.done / "report.json").read_text())


def _int8(report: dict, headline: float) -> dict:
    """`report` with its first int8 row's headline quality set (the issue's 0.99 -> 0.50 edit)."""
    row = next(r for r in report["rows"] if "int8" in r["variant"] and r.get("status") == "ok")
    row["headline"] = headline
    return report


def _quality_pair(work: Path, inputs: Inputs) -> tuple[Path, Path]:
    old, new = work / "old.json", work / "new.json"
    old.write_text(json.dumps(_int8(_report(inputs), 0.99)))
    new.write_text(json.dumps(_int8(_report(inputs), 0.50)))
    return old, new


def _edited(work: Path, inputs: Inputs, edit: Callable[[dict], dict]) -> Path:
    path = work / "report.json"
    path.write_text(json.dumps(edit(_report(inputs))))
    return path


def _failed_rerun(work: Path, inputs: Inputs) -> list[str]:
    """The finished run re-run with a bench that fails (a provider that cannot run, strictly): exit 1."""
    run = _done_copy(work, inputs)
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(_recipe(work, inputs)), "--out", str(run),
                           "--set", "stages.2.providers=[cuda]", "--strict-providers"],
                          cwd=work, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 1:
        raise RuntimeError(f"the failing re-run exited {proc.returncode}: {proc.stderr[-300:]}")
    return ["gate", str(run / "report.json")]


def _edited_results(work: Path, inputs: Inputs) -> list[str]:
    run = _done_copy(work, inputs)
    results = run / "artifacts" / "bench" / "results.json"
    data = json.loads(results.read_text())
    for row in data["rows"]:
        if isinstance(row.get("latency_ms"), dict):
            row["latency_ms"]["p50"] = 0.0
    results.write_text(json.dumps(data))
    return ["report", str(run)]


def _stale_card(work: Path, inputs: Inputs) -> list[str]:
    """A card compress wrote for a variant the run no longer has (the quantize scheme changed), and a user's own
    notes in model_cards/: `compress report` removes the first, keeps the second."""
    run = _done_copy(work, inputs)
    cards = run / "model_cards"
    card = next(p for p in sorted(cards.glob("*.md")))
    (cards / "teacher.int4-weight.onnx.md").write_text(card.read_text().replace(card.stem, "teacher.int4-weight.onnx"))
    (cards / "my-notes.md").write_text("# my notes on these models\n")
    return ["report", str(run)]


def _benchless(work: Path, inputs: Inputs) -> list[str]:
    """A real run of a recipe without a bench stage, then its gate."""
    recipe = _recipe(work, inputs)
    text = recipe.read_text()
    recipe.write_text(text[: text.index("  - kind: quantize")])
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(work / "run")],
                          cwd=work, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"the bench-less run exited {proc.returncode}: {proc.stderr[-300:]}")
    return ["gate", str(work / "run" / "report.json")]


CASES: list[Case] = [
    # --- nothing lost
    Case("schema_out_folder", "`compress schema --out DIR` of an existing folder",
         lambda w, i: ["schema", "--out", str(_folder_with(w, "mine", {"keep.txt": "precious"}))],
         2, "is a folder"),
    Case("schema_out_foreign_file", "`compress schema --out FILE` of a file compress did not write",
         lambda w, i: ["schema", "--out", str(_folder_with(w, "d", {"notes.json": "{}"}) / "notes.json")],
         2, "compress did not write it"),
    Case("schema_out_dev_null", "`compress schema --out /dev/null`",
         lambda w, i: ["schema", "--out", "/dev/null"], 2, "not a regular file"),
    Case("gate_comment_folder", "`compress gate REPORT --comment DIR` of an existing folder",
         lambda w, i: ["gate", str(i.done / "report.json"), "--comment",
                       str(_folder_with(w, "mine", {"keep.txt": "precious"}))], 2, "is a folder"),
    Case("gate_summary_folder", "`compress gate REPORT --summary DIR`",
         lambda w, i: ["gate", str(i.done / "report.json"), "--summary",
                       str(_folder_with(w, "mine", {"keep.txt": "precious"}))], 2, "is a folder"),
    Case("run_out_foreign_folder", "`compress run --out DIR` of a folder of the user's files (report.md, .tmp-*)",
         lambda w, i: ["run", str(_recipe(w, i)), "--out",
                       str(_folder_with(w, "mine", {"report.md": "my report", ".tmp-draft": "my draft"}))],
         2, "holds files compress did not write"),
    Case("run_out_file", "`compress run --out FILE` of an existing file",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(_folder_with(w, "d", {"f.txt": "x"}) / "f.txt")],
         2, "is a file, not a folder"),
    Case("run_out_dev_null", "`compress run --out /dev/null`",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", "/dev/null"], 2, "is a file, not a folder"),
    Case("run_keeps_user_tmp", "a re-run keeps a user's `.tmp-*` files in its run directory (only compress's "
         "own temporaries are cleaned)", _user_tmp, 0, "", ours=("run",),
         keep=("run/.tmp-notes.txt", "run/artifacts/.tmp-mine"), short=False),
    # --- one sentence instead of a traceback
    Case("teacher_config_only", "a teacher folder with config.json only",
         lambda w, i: _model_copy(w, i, _no_weights), 2, "no weights", ours=("run",)),
    Case("teacher_bad_config", "a teacher whose config.json is not JSON",
         lambda w, i: _model_copy(w, i, lambda m: (m / "config.json").write_text("{not json")), 2,
         "not a readable JSON object", ours=("run",)),
    Case("teacher_truncated_weights", "a truncated model.safetensors",
         lambda w, i: _model_copy(w, i, _truncate), 2, "truncated", ours=("run",)),
    Case("teacher_no_tokenizer", "a text model without tokenizer files",
         lambda w, i: _model_copy(w, i, _no_tokenizer), 2, "no tokenizer", ours=("run",)),
    Case("teacher_unknown_model_type", "a config.json with a model_type transformers does not know",
         lambda w, i: _model_copy(w, i, _model_type), 2, "model_type 'bert-of-my-own'", ours=("run",)),
    Case("teacher_link_outside", "tokenizer.json a symbolic link to a file outside the model folder",
         lambda w, i: _model_copy(w, i, _link_out), 2, "outside the model folder", ours=("run",)),
    Case("teacher_missing_layer", "a teacher whose second layer's weights are missing (not a parity failure)",
         lambda w, i: _model_copy(w, i, _missing_layer), 2, "lacks 16 of the model's weights", ours=("run",),
         short=False),
    Case("report_of_a_file", "`compress report FILE`",
         lambda w, i: ["report", str(_folder_with(w, "d", {"r.json": "{}"}) / "r.json")], 2, "is a file"),
    Case("report_symlinked_artifact", "`compress report` of a run whose bench artifact was replaced by a link",
         _symlinked_artifact, 2, "symbolic link"),
    # --- data
    Case("data_blank_label", "a CSV with a blank label cell",
         lambda w, i: _data_copy(w, i, "d.csv", _labelled([(t, str(n % 2)) for n, t in enumerate(TEXTS)])
                                 .replace(f"{TEXTS[3]},1\n", f"{TEXTS[3]},\n")),
         2, "line 5 has no label in 'label'", ours=("run",)),
    Case("data_jsonl_list", "a .jsonl whose text is a list",
         lambda w, i: _data_copy(w, i, "d.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:20])
                                 + json.dumps({"text": ["a", "list"]}) + "\n", label=False),
         2, "line 21: 'text' is a list, not a text", ours=("run",)),
    Case("data_jsonl_null", "a .jsonl whose text is null",
         lambda w, i: _data_copy(w, i, "d.jsonl", json.dumps({"text": None}) + "\n"
                                 + "".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:20]), label=False),
         2, "line 1: 'text' is null", ours=("run",), short=False),
    Case("data_jsonl_number", "a .jsonl whose text is a number",
         lambda w, i: _data_copy(w, i, "d.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:20])
                                 + json.dumps({"text": 12}) + "\n", label=False),
         2, "'text' is a number", ours=("run",), short=False),
    Case("data_one_class", "a label column with a single class",
         lambda w, i: _data_copy(w, i, "d.csv", _labelled([(t, "pos") for t in TEXTS])), 2,
         "needs at least two classes", ours=("run",), short=False),
    Case("data_too_many_classes", "a label column with 1,200 classes (the wrong column)",
         lambda w, i: _data_copy(w, i, "d.csv", _labelled([(f"text {n}", str(n)) for n in range(1200)])), 2,
         "1200 different labels", ours=("run",), short=False),
    # --- paths checked before anything runs
    Case("validate_missing_paths", "`compress validate` of a recipe whose teacher and data do not exist",
         lambda w, i: ["validate", str(_recipe(w, i, model=str(w / "no-model"), texts=str(w / "no.csv")))], 2,
         "r.yaml:4: teacher.source", messages=2),
    Case("run_missing_data", "`compress run` of a recipe whose data file does not exist",
         lambda w, i: ["run", str(_recipe(w, i, texts=str(w / "no.csv"))), "--out", str(w / "run")], 2,
         "r.yaml:5: data.source"),
    # --- the gate: quality regressions, empty and stale reports, exit codes
    Case("gate_quality_regression", "`compress gate NEW --baseline OLD`, int8 row quality 0.99 -> 0.50 (edited "
         "reports)", lambda w, i: (lambda old, new: ["gate", str(new), "--baseline", str(old)])(*_quality_pair(w, i)),
         1, "max-quality-regression: teacher.int8-dynamic.onnx"),
    Case("compare_quality_regression", "`compress compare OLD NEW`, int8 row quality 0.99 -> 0.50",
         lambda w, i: ["compare", *map(str, _quality_pair(w, i))], 1,
         "quality regressions beyond 0.02 cosine: teacher.int8-dynamic.onnx", messages=0),
    Case("gate_empty_rows", "`compress gate` of a report with `rows: []`",
         lambda w, i: ["gate", str(_edited(w, i, lambda r: {**r, "rows": []}))], 1, "rows: []"),
    Case("gate_benchless_run", "`compress gate` of a real run without a bench stage", _benchless, 1, "rows: []",
         ours=("run",), short=False),
    Case("gate_rows_missing_keys", "`compress gate` of a report whose rows miss keys (a crash inside gate)",
         lambda w, i: ["gate", str(_edited(w, i, lambda r: {**r, "rows": [{"variant": "x"} for _ in r["rows"]]}))],
         2, "could not be read as compress writes it"),
    Case("compare_rows_missing_keys", "`compress compare` of reports whose rows miss keys",
         lambda w, i: ["compare", str(_edited(w, i, lambda r: {**r, "rows": [{"status": "ok"}]})),
                       str(i.done / "report.json")], 2, "could not be read as compress writes it"),
    Case("gate_stale_report", "`compress gate` after a re-run that failed in bench (exit 1): no report older than "
         "its run", _failed_rerun, 2, "no such file", ours=("run",), short=False),
    Case("report_edited_results", "`compress report` of a run whose bench results.json was edited (p50 0.00 ms)",
         _edited_results, 2, "changed since the run wrote it"),
    Case("report_stale_card", "`compress report` after the quantize scheme changed: the old variant's model card "
         "goes, a user's own file in model_cards/ stays", _stale_card, 0, "", ours=("run",),
         keep=("run/model_cards/my-notes.md",), gone=("run/model_cards/teacher.int4-weight.onnx.md",)),
    # --- signals
    Case("sigterm_in_export", "SIGTERM while export's parity subprocess runs",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(w / "run")], 143,
         "interrupted (SIGTERM) in export", ours=("run",), signal="SIGTERM", wait_for="compress.stages.parity"),
    Case("sigint_in_export", "Ctrl-C (SIGINT) while export's parity subprocess runs",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(w / "run")], 130,
         "interrupted (Ctrl-C) in export", ours=("run",), signal="SIGINT", wait_for="compress.stages.parity",
         short=False),
]


def case_named(name: str) -> Case:
    return next(c for c in CASES if c.name == name)
