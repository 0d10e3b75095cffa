"""Issue 29, the input failures (bench/reliability_cases_inputs.py): case by case through the CLI, and the pieces
in-process where a command is not the right level."""

from __future__ import annotations

import re

import pytest
import yaml

from bench.reliability_cases_inputs import CASES
from bench.reliability_inputs import run_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case_exit_code_one_message_and_nothing_else_touched(case, inputs, tmp_path):
    problems, _ = run_case(case, tmp_path, inputs)
    assert not problems, problems


# ---------------------------------------------------------------- F19: init writes YAML that reads back


@pytest.mark.parametrize("name", ["123", "yes", "null", "0x1F", "on"])
def test_init_recipe_name_reads_back_as_given(name):
    from compress.quick import init_recipe

    text = init_recipe("sentence-embedding", name=name)

    assert yaml.safe_load(text)["name"] == name


@pytest.mark.parametrize("name", ["foo #bar", "a: b", "x\ny", "[1]", "it's"])
def test_init_recipe_refuses_a_name_that_is_not_a_run_name(name):
    from compress.quick import UsageError, init_recipe

    with pytest.raises(UsageError, match="is not a run name"):
        init_recipe("sentence-embedding", name=name)


# ---------------------------------------------------------------- F20: data files that are not UTF-8 text


@pytest.mark.parametrize("data, says", [
    ("\ufefftext,label\nok,1\n".encode("utf-16"), "is UTF-16 text"),
    (b"PK\x03\x04" + bytes(range(256)) * 20, "holds binary data"),
    ("text\ncaf\u00e9 cr\u00e8me\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 8)"),
    ("text,label\ncaf\u00e9,1\n".encode("utf-8-sig"), None),
], ids=["utf16", "binary", "latin1", "utf8-bom"])
def test_data_problem_names_the_encoding_of_a_file_that_is_not_utf8(tmp_path, data, says):
    from compress.inputs import data_problem

    path = tmp_path / "d.csv"
    path.write_bytes(data)

    message = data_problem(str(path), "text-classification")

    assert (message is None) if says is None else (says in message and len(message) < 300)


def test_field_problems_caps_and_escapes_the_columns_it_shows(tmp_path):
    from compress.inputs import field_problems

    path = tmp_path / "d.csv"
    path.write_text(",".join(f"column\x07{n}" + "x" * 200 for n in range(100)) + "\n1\n")

    (key, message), = field_problems(str(path), {"text_field": "text"}, ("data",))

    assert key == ("data", "text_field")
    assert "\x07" not in message and "(88 more)" in message and len(message) < 800


# ---------------------------------------------------------------- F18: one class in the held-out part


@pytest.mark.parametrize("kwargs", [{}, {"data_labels": ["neg", "pos"], "model_labels": ["neg", "pos"]}])
def test_decide_says_the_held_out_part_has_one_class(kwargs):
    from compress.tasks import quality_basis

    teacher = {"accuracy": 0.75, "agreement": 1.0, "chance_accuracy": 1.0}

    headline, why = quality_basis.decide("accuracy", teacher, **kwargs)

    assert headline == "agreement"
    assert "the held-out part has one class only" in why and "at chance" not in why
    assert not quality_basis.at_chance(teacher)


# ---------------------------------------------------------------- F5: data labels are the model's class ids


def _dataset(names: list[str], labels: list[str]):
    from compress.data import Dataset, Split

    ids = [names.index(v) for v in labels]
    return Dataset(train=Split([f"t{n}" for n in range(len(ids))], ids), eval=Split(["e"] * len(ids), ids),
                   label_names=names)


def _model(folder, id2label: dict | None, **config):
    import json

    folder.mkdir()
    extra = {"id2label": {str(k): v for k, v in id2label.items()},
             "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", **extra, **config}))
    return folder


GENERIC_12 = {i: f"LABEL_{i}" for i in range(12)}
BY_NAME_12 = sorted(str(i) for i in range(12))  # "10" before "2": how the data once numbered them


@pytest.mark.parametrize("id2label, names, labels, expected", [
    ({0: "pos", 1: "neg"}, ["neg", "pos"], ["pos", "pos", "neg"], [0, 0, 1]),  # through label2id, not sorted
    ({0: "Negative", 1: "Neutral", 2: "Positive"}, ["Negative", "Positive"], ["Positive", "Negative"], [2, 0]),
    ({0: "NEGATIVE", 1: "POSITIVE"}, ["negative", "positive"], ["positive", "negative"], [1, 0]),
    (GENERIC_12, BY_NAME_12, ["10", "2", "11", "0"], [10, 2, 11, 0]),  # numbers as numbers
    ({0: "neg", 1: "pos"}, ["0", "1"], ["1", "0"], [1, 0]),  # numbers are class ids of a named model too
    ({i: str(i) for i in range(12)}, BY_NAME_12, ["10", "2"], [10, 2]),
    (None, ["neg", "pos"], ["pos", "neg"], [1, 0]),  # no names: the data's order, as before (finetune's heads)
    ({0: "LABEL_0", 1: "LABEL_1"}, ["neg", "pos"], ["pos", "neg"], [1, 0]),
    ({0: "tench", 1: "goldfish"}, ["cat", "dog"], ["dog", "cat"], [1, 0]),  # not its classes: the report says so
], ids=["named-reversed", "named-subset", "named-other-case", "integers-12", "integers-named", "digit-names",
        "no-names", "generic",
        "other-names"])
def test_for_model_maps_data_labels_to_the_models_class_ids(tmp_path, id2label, names, labels, expected):
    from compress.tasks import text_classification
    from compress.tasks.common import for_model

    model = _model(tmp_path / "m", id2label)

    mapped = for_model(text_classification, _dataset(names, labels), model, "d.csv")

    assert mapped.train.labels == expected and mapped.eval.labels == expected
    assert mapped.label_names == names  # the report compares the data's names with the model's


@pytest.mark.parametrize("id2label, names, error", [
    ({0: "LABEL_0", 1: "LABEL_1"}, ["0", "1", "2"], "label '2' is not a class of the model, which has 2 classes"),
    (None, ["0", "1", "2"], "label '2' is not a class of the model, which has 2 classes"),
    ({0: "LABEL_0", 1: "LABEL_1"}, ["a", "b", "c"], "3 classes in the labels ('a', 'b', 'c') but the model has 2"),
])
def test_for_model_refuses_labels_the_model_cannot_have(tmp_path, id2label, names, error):
    from compress.errors import SourceError
    from compress.tasks import text_classification
    from compress.tasks.common import for_model

    model = _model(tmp_path / "m", id2label)

    with pytest.raises(SourceError, match=re.escape(error)):
        for_model(text_classification, _dataset(names, names), model, "d.csv")


def test_load_dataset_orders_integer_labels_as_numbers(tmp_path):
    from compress.data import load_dataset
    from compress.recipe.schema import DataConfig

    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"text {n},{n % 12}\n" for n in range(48)))

    data = load_dataset(DataConfig(source=str(path), label_field="label", eval_size=12))

    assert data.label_names == [str(i) for i in range(12)]


# ---------------------------------------------------------------- F13: lengths beyond the teacher's positions


@pytest.mark.parametrize("config, limit", [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "mpnet", "max_position_embeddings": 130, "pad_token_id": 1}, 128),
    ({"model_type": "gpt2", "n_positions": 1024}, 1024),
    ({"model_type": "custom"}, None),
])
def test_max_positions_reads_the_models_limit(tmp_path, config, limit):
    import json

    from compress.inputs import max_positions

    (tmp_path / "config.json").write_text(json.dumps(config))

    assert max_positions(tmp_path) == limit


@pytest.mark.parametrize("task, stage, data, problem", [
    ("sentence-embedding", {"kind": "bench", "seq_lens": [128, 513]}, {}, "stages.1.seq_lens: 513 tokens"),
    ("sentence-embedding", {"kind": "bench", "seq_lens": [512, "data"]}, {}, None),
    ("sentence-embedding", {"kind": "bench", "seq_lens": [64]}, {"max_length": 600}, "data.max_length: 600 tokens"),
    ("causal-lm", {"kind": "bench", "seq_lens": [500], "new_tokens": 32}, {},
     "500 prompt tokens + new_tokens 32 is more than the teacher's 512 positions (its config.json); use at most 480"),
])
def test_check_paths_refuses_lengths_beyond_the_teachers_positions(tmp_path, task, stage, data, problem):
    import json

    from compress.errors import RecipeError
    from compress.inputs import check_paths
    from compress.recipe import parse_recipe

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512}))
    (tmp_path / "texts.txt").write_text("a text\n" * 40)
    recipe = parse_recipe(yaml.safe_dump({
        "version": 1, "name": "n", "task": task, "teacher": {"source": str(model)},
        "data": {"source": str(tmp_path / "texts.txt"), **data}, "stages": [{"kind": "export"}, stage]}), "r.yaml")

    if problem is None:
        check_paths(recipe)
    else:
        with pytest.raises(RecipeError, match=re.escape(problem)):
            check_paths(recipe)


def test_decide_matches_label_names_without_case():
    from compress.tasks import quality_basis

    teacher = {"accuracy": 0.9, "agreement": 1.0, "chance_accuracy": 0.5}

    assert quality_basis.decide("accuracy", teacher, data_labels=["negative", "positive"],
                                model_labels=["NEGATIVE", "POSITIVE"]) == ("accuracy", None)


# ---------------------------------------------------------------- F10: a fixed batch axis


def test_quant_check_times_a_fixed_batch_axis_at_its_size(tmp_path):
    import numpy as np

    from compress import quant_check

    class Session:  # what onnxruntime says of an input declared [2, 16]
        def get_inputs(self):
            return [type("Input", (), {"name": "input_ids", "shape": [2, 16]})()]

    batch = {"input_ids": np.ones((2, 16), dtype=np.int64), "attention_mask": np.ones((2, 16), dtype=np.int64)}
    check = {"checker": "ok", "examples": 4, "cosine": 1.0, "speedup_b1": 1.5, "speedup_batch": 2}

    assert quant_check.first_example(batch, Session())["input_ids"].shape == (2, 16)
    assert "1.50x fp32's speed at batch 2" in quant_check.summary_line("m.onnx", 10**6, 0.25, check, 0, None)
