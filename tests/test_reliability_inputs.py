"""Issue 20, case by case (bench/reliability_inputs.py): the documented exit code, one message, no traceback, and
every file the command did not create left as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from bench.reliability_cases import CASES
from bench.reliability_inputs import run_case

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case_exit_code_one_message_and_nothing_else_touched(case, inputs, tmp_path):
    problems, _ = run_case(case, tmp_path, inputs)
    assert not problems, problems


# ---------------------------------------------------------------- the pieces, in-process


def test_atomic_path_never_puts_a_file_over_a_folder(tmp_path):
    from compress.artifacts import write_text_atomic
    from compress.errors import InputError

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="is a folder"):
        write_text_atomic(folder, "x")
    assert (folder / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary left beside it


@pytest.mark.parametrize("make", ["symlink", "fifo"])
def test_atomic_path_refuses_links_and_devices(tmp_path, make):
    from compress.artifacts import write_text_atomic
    from compress.errors import InputError

    target = tmp_path / "target"
    if make == "symlink":
        (tmp_path / "real.txt").write_text("real")
        target.symlink_to(tmp_path / "real.txt")
    else:
        os.mkfifo(target)
    with pytest.raises(InputError):
        write_text_atomic(target, "x")
    assert make != "symlink" or (tmp_path / "real.txt").read_text() == "real"


def test_clean_temporaries_removes_only_compress_temporaries(tmp_path):
    from compress.artifacts import TMP_PREFIX, clean_temporaries

    (tmp_path / f"{TMP_PREFIX}1234-model.onnx").write_text("half")
    (tmp_path / ".tmp-notes").write_text("the user's")
    assert clean_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".tmp-notes"]


@pytest.mark.parametrize(
    "files, refused",
    [
        ({}, False),  # an empty folder becomes a run dir
        ({"report.md": "mine"}, True),
        ({".tmp-draft": "mine"}, True),
        ({"manifest.json": "{}"}, True),  # a manifest.json alone proves nothing (issue 29; old runs: test_trust_files)
        ({".compress-run": "compress run directory: compress may replace what it wrote here\n", "report.md": "ours"},
         False),
    ],
)
def test_claim_refuses_a_folder_of_someone_elses_files(tmp_path, files, refused):
    from compress.errors import InputError
    from compress.rundir import MARKER, claim

    run = tmp_path / "run"
    run.mkdir()
    for name, text in files.items():
        (run / name).write_text(text)
    if refused:
        with pytest.raises(InputError, match="holds files compress did not write"):
            claim(run)
        assert not (run / MARKER).exists()
    else:
        before = sorted(p.name for p in run.iterdir())
        claim(run)
        # An empty folder is marked; a folder already compress's is left as it was.
        assert sorted(p.name for p in run.iterdir()) == (before or [MARKER])


def _damage(kind: str, model: Path) -> None:
    if kind == "no-weights":
        (model / "model.safetensors").unlink()
    elif kind == "bad-config":
        (model / "config.json").write_text("{not json")
    elif kind == "truncated":
        with open(model / "model.safetensors", "r+b") as handle:
            handle.truncate(5000)
    elif kind == "no-tokenizer":
        (model / "tokenizer.json").unlink()
        (model / "vocab.txt").unlink()
    elif kind == "model-type":
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "model_type": "nonsense"}))
    elif kind == "link-out":
        outside = model.parent / "elsewhere.json"
        outside.write_text("{}")
        (model / "tokenizer.json").unlink()
        (model / "tokenizer.json").symlink_to(outside)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("no-weights", "no weights"),
        ("bad-config", "not a readable JSON object"),
        ("truncated", "truncated"),
        ("no-tokenizer", "no tokenizer"),
        ("model-type", "model_type 'nonsense'"),
        ("link-out", "outside the model folder"),
    ],
)
def test_check_model_folder_refuses_a_damaged_folder_in_one_sentence(tiny_bert, tmp_path, kind, expected):
    from compress.errors import SourceError
    from compress.sources import check_model_folder

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    _damage(kind, model)
    with pytest.raises(SourceError, match=re.escape(expected)) as info:
        check_model_folder(model, needs_tokenizer=True)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_check_model_folder_follows_links_out_only_when_allowed(tiny_bert, tmp_path):
    from compress.sources import check_model_folder

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    _damage("link-out", model)
    assert check_model_folder(model, allow_external_links=True, needs_tokenizer=True)["weights"] == "safetensors"


def test_load_model_names_missing_weights_not_parity(tiny_bert, tmp_path):
    from safetensors.torch import load_file, save_file

    from compress.errors import SourceError
    from compress.tasks import sentence_embedding

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    tensors = load_file(model / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".layer.1." not in k}, model / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(SourceError, match=r"lacks 16 of the model's weights \(encoder\.layer\.1\."):
        sentence_embedding.load_model(model)


def _data(tmp_path, name: str, text: str, **cfg):
    from compress.data import load_dataset
    from compress.recipe import DataConfig

    path = tmp_path / name
    path.write_text(text)
    return load_dataset(DataConfig(source=str(path), eval_size=2, **cfg))


ROWS = [f"text number {i}" for i in range(12)]


@pytest.mark.parametrize(
    "name, text, cfg, expected",
    [
        ("d.csv", "text,label\n" + "".join(f"{t},{i % 2 if i != 4 else ''}\n" for i, t in enumerate(ROWS)),
         {"label_field": "label"}, "line 6 has no label in 'label' (a blank cell)"),
        ("d.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in ROWS) + '{"text": ["a", "list"]}\n', {},
         "line 13: 'text' is a list, not a text"),
        ("d.jsonl", '{"text": {"a": 1}}\n' + "".join(json.dumps({"text": t}) + "\n" for t in ROWS), {},
         "line 1: 'text' is an object, not a text"),
        ("d.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in ROWS) + '{"text": 3.5}\n', {},
         "line 13: 'text' is a number"),
        ("d.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in ROWS) + '{"text": null}\n', {},
         "line 13: 'text' is null"),
        ("d.csv", "text,label\n" + "".join(f"{t},pos\n" for t in ROWS), {"label_field": "label"},
         "needs at least two classes"),
        ("d.csv", "text,label\n" + "".join(f"t{i},{i}\n" for i in range(1003)), {"label_field": "label"},
         "1003 different labels"),
    ],
)
def test_load_dataset_refuses_wrong_values_naming_the_row(tmp_path, name, text, cfg, expected):
    from compress.errors import SourceError

    with pytest.raises(SourceError, match=re.escape(expected)):
        _data(tmp_path, name, text, **cfg)


def test_load_dataset_keeps_integer_labels_as_written(tmp_path):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": ROWS, "label": [float(i % 2) for i in range(len(ROWS))]}).to_parquet(path)
    from compress.data import load_dataset
    from compress.recipe import DataConfig

    data = load_dataset(DataConfig(source=str(path), eval_size=2, label_field="label", labels=["0", "1"]))
    assert data.label_names == ["0", "1"] and len(data.train.texts) + len(data.eval.texts) == len(ROWS)


@pytest.mark.parametrize(
    "teacher, data, expected",
    [
        ("./no-model", "texts.csv", ["r.yaml:4: teacher.source: './no-model' does not exist"]),
        ("model", "no.csv", ["r.yaml:5: data.source: 'no.csv' does not exist"]),
        ("texts.csv", "model", ["r.yaml:4: teacher.source: 'texts.csv' is a file",
                                "r.yaml:5: data.source: 'model' is a folder"]),
    ],
)
def test_check_paths_names_each_missing_path_with_file_line(tmp_path, monkeypatch, teacher, data, expected):
    from compress.errors import RecipeError
    from compress.inputs import check_paths
    from compress.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "texts.csv").write_text("text\nhello\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nname: r\ntask: sentence-embedding\nteacher: {{source: {teacher}}}\n"
                      f"data: {{source: {data}}}\nstages: [{{kind: export}}]\n")
    with pytest.raises(RecipeError) as info:
        check_paths(load_recipe(recipe), "r.yaml")
    assert len(str(info.value).splitlines()) == len(expected)
    for line in expected:
        assert any(got.startswith(line) for got in str(info.value).splitlines()), str(info.value)


def test_check_paths_names_a_missing_unlabeled_source_with_its_line(tmp_path, monkeypatch):
    from compress.errors import RecipeError
    from compress.inputs import check_paths
    from compress.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "texts.csv").write_text("text\nhello\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nname: r\ntask: sentence-embedding\nteacher: {source: model}\ndata:\n"
                      "  source: texts.csv\n  unlabeled:\n    source: more.csv\nstages: [{kind: export}]\n")

    with pytest.raises(RecipeError, match=r"^r\.yaml:8: data\.unlabeled\.source: 'more\.csv' does not exist"):
        check_paths(load_recipe(recipe), "r.yaml")
