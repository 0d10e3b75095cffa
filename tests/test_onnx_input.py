"""ONNX models as the teacher (issue 17): what the graph is, the bundle it becomes, and a run without PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_models import export_tiny_bert, export_tiny_cnn

from compress.errors import RecipeError, SourceError
from compress.recipe import parse_recipe
from compress.tasks import onnx_input

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
FAST_BENCH = "{kind: bench, seq_lens: [16], warmup: 1, min_iterations: 3, min_seconds: 0, rounds: 1}"


@pytest.fixture(scope="module")
def onnx_bert(tmp_path_factory) -> Path:
    return export_tiny_bert(tmp_path_factory.mktemp("onnx-bert"))


@pytest.fixture(scope="module")
def onnx_cnn(tmp_path_factory) -> Path:
    return export_tiny_cnn(tmp_path_factory.mktemp("onnx-cnn"))


def _graph(path: Path, inputs: list[tuple], outputs: list[tuple]) -> Path:
    """A graph of Identity/ReduceMean nodes with the given (name, elem_type, dims) inputs and outputs."""
    import onnx
    from onnx import helper

    nodes = []
    for i, (name, _, dims) in enumerate(outputs):
        source = inputs[min(i, len(inputs) - 1)][0]
        cast = helper.make_node("Cast", [source], [f"c{i}"], to=1)
        nodes += [cast, helper.make_node("Identity", [f"c{i}"], [name])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*t) for t in inputs],
                              [helper.make_tensor_value_info(*t) for t in outputs])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


TEXT = [("input_ids", 7, ["b", "s"]), ("attention_mask", 7, ["b", "s"])]


@pytest.mark.parametrize("inputs, outputs, task, options, error", [
    ([("x", 1, [1, 10])], [("y", 1, [1, 10])], "sentence-embedding", {}, "no recognisable inputs"),
    ([("pixel_values", 1, ["b", 3, 8, 8])], [("logits", 1, ["b", 2])], "sentence-embedding", {},
     "set task: image-classification"),
    (TEXT, [("logits", 1, ["b", 2])], "sentence-embedding", {}, "set task: text-classification"),
    (TEXT, [("last_hidden_state", 1, ["b", "s", 4])], "text-classification", {}, "teacher.output"),
    (TEXT, [("a", 1, ["b", 4]), ("c", 1, ["b", 4])], "sentence-embedding", {}, "set teacher.output: <one of a, c>"),
    (TEXT, [("last_hidden_state", 1, ["b", "s", 4])], "sentence-embedding", {"output": "nope"}, "has no output 'nope'"),
    (TEXT, [("sentence_embedding", 1, ["b", 4])], "sentence-embedding", {"pooling": "cls"}, "already pooled"),
    (TEXT + [("position_ids", 7, ["b", "s"])], [("logits", 1, ["b", 2])], "text-classification", {},
     "'position_ids' is not one compress can feed"),
    (TEXT, [("logits", 1, ["b", 2])], "causal-lm", {}, "not supported"),
    ([("input_ids", 1, ["b", "s"])], [("logits", 1, ["b", 2])], "text-classification", {}, "not an integer"),
])
def test_plan_refuses_what_does_not_fit_the_task(tmp_path, inputs, outputs, task, options, error):
    info = onnx_input.inspect(_graph(tmp_path / "m.onnx", inputs, outputs))
    with pytest.raises(SourceError, match=error.replace("(", r"\(").replace("<", ".").replace(">", ".")):
        onnx_input.plan(info, task, **options)


@pytest.mark.parametrize("inputs, outputs, task, expected", [
    (TEXT, [("last_hidden_state", 1, ["b", "s", 4])], "sentence-embedding",
     {"output": "last_hidden_state", "pooling": "mean", "fixed_axes": {}}),
    (TEXT, [("token_embeddings", 1, ["b", "s", 4]), ("sentence_embedding", 1, ["b", 4])], "sentence-embedding",
     {"output": "sentence_embedding", "pooling": None}),
    ([("input_ids", 6, [1, 128]), ("attention_mask", 6, [1, 128]), ("token_type_ids", 6, [1, 128])],
     [("logits", 1, [1, 2])], "text-classification",
     {"output": "logits", "fixed_axes": {"batch": 1, "sequence": 128}, "token_type_ids": True,
      "int32_inputs": ["input_ids", "attention_mask", "token_type_ids"]}),
    ([("image", 1, [1, 3, 224, 224])], [("scores", 1, [1, 1000])], "image-classification",
     {"output": "scores", "image_input": "image", "fixed_axes": {"batch": 1, "channels": 3, "height": 224,
                                                                  "width": 224}}),
])
def test_plan_reads_inputs_outputs_and_fixed_axes(tmp_path, inputs, outputs, task, expected):
    plan = onnx_input.plan(onnx_input.inspect(_graph(tmp_path / "m.onnx", inputs, outputs)), task)
    assert {k: getattr(plan, k) for k in expected} == expected


def test_inspect_refuses_a_file_that_is_not_onnx(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(SourceError, match="not an ONNX model"):
        onnx_input.inspect(tmp_path / "model.onnx")


@pytest.mark.parametrize("pooling", [None, "cls", "max"])
def test_bundle_pools_token_states_like_the_pytorch_model(tmp_path, pooling):
    """The bundle's embedding equals the sentence-embedding task's PyTorch computation (token_type_ids zeros)."""
    import onnxruntime as ort
    import torch
    from conftest import make_tiny_bert

    from compress.tasks import sentence_embedding
    from compress.tasks.common import TextInputs

    reference_dir = make_tiny_bert(tmp_path / "ref")
    if pooling:
        (reference_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": pooling}))
    model = sentence_embedding.load_model(reference_dir)
    source = export_tiny_bert(tmp_path / "onnx")  # the same seed: the same weights
    details = onnx_input.write_bundle(source / "model.onnx", tmp_path / "bundle", "sentence-embedding", pooling=pooling)
    assert details["pooling"] == (pooling or "mean") and details["normalize"] is True
    feeds = TextInputs(tmp_path / "bundle").encode(["a short one", "a much longer text about a film here"], 32)
    session = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask"))).numpy()
    assert np.abs(session.run(["embedding"], feeds)[0] - expected).max() < 1e-5


def test_validate_says_training_stages_need_a_pytorch_teacher(onnx_bert, tiny_texts):
    recipe = f"""version: 1
name: x
task: sentence-embedding
teacher: {{source: {onnx_bert / 'model.onnx'}}}
data: {{source: {tiny_texts}}}
stages: [{{kind: distill, student: {{from_teacher: {{layers: [0]}}}}}}, {{kind: export}}]
"""
    with pytest.raises(RecipeError, match=r"stages\[0\] \(distill\) needs a PyTorch teacher"):
        parse_recipe(recipe)


def _run(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(out), *extra],
                          capture_output=True, text=True, env=ENV, timeout=600)


@pytest.mark.parametrize("task, data, schemes", [
    ("sentence-embedding", "texts", "[int8-static, int4-weight, fp16]"),
    ("image-classification", "sklearn:digits", "[int8-static, fp16]"),
])
def test_onnx_teacher_quantize_bench_report(tmp_path, onnx_bert, onnx_cnn, tiny_texts, task, data, schemes):
    """The acceptance run: an ONNX file as the model, no PyTorch anywhere; the fp32 input is the baseline row and
    quality is measured against it."""
    source = onnx_bert / "model.onnx" if task == "sentence-embedding" else onnx_cnn
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
name: onnx-in
task: {task}
teacher: {{source: {source}, license: apache-2.0}}
data: {{source: {tiny_texts if data == 'texts' else data}, eval_size: 40, max_length: 16}}
stages:
  - {{kind: quantize, schemes: {schemes}, int8: {{calibration_size: 16}}}}
  - {FAST_BENCH}
""")
    proc = _run(recipe, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("report.md", "report.json", "report.html", "MODEL_CARD.md"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["artifacts"]["teacher"]["format"] == "onnx"
    report = json.loads((run / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert "teacher" not in rows and rows["teacher.onnx"]["is_baseline"]
    headline = "cosine" if task == "sentence-embedding" else "agreement"
    assert rows["teacher.onnx"]["quality"][headline] == pytest.approx(1.0, abs=1e-6)
    quantized = [r for name, r in rows.items() if name != "teacher.onnx"]
    assert len(quantized) == schemes.count(",") + 1
    assert all(r["quality"].get(headline) is not None for r in quantized)
    assert "fp32 ONNX input" in (run / "report.md").read_text()


def test_bad_onnx_input_is_one_sentence(tmp_path, tiny_texts):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
name: bad
task: sentence-embedding
teacher: {{source: {bad}}}
data: {{source: {tiny_texts}}}
stages: [{{kind: quantize}}]
""")
    proc = _run(recipe, tmp_path / "run")
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr
    assert "not an ONNX model" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_fixed_axes_bench_at_the_models_length_and_batch(tmp_path, tiny_texts):
    """A graph exported with a fixed [1, 16] input benches at b1/s16 whatever the recipe asks, and evaluates one
    example at a time, padded to 16 tokens."""
    source = export_tiny_bert(tmp_path / "fixed", token_type_ids=False, fixed=(1, 16))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
name: fixed
task: sentence-embedding
teacher: {{source: {source}, license: apache-2.0}}
data: {{source: {tiny_texts}, eval_size: 12, max_length: 64}}
stages:
  - {{kind: quantize, schemes: [int8-dynamic]}}
  - {{kind: bench, batch_sizes: [1, 4], seq_lens: [128], warmup: 1, min_iterations: 3, min_seconds: 0, rounds: 1}}
""")
    proc = _run(recipe, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the model's axes are fixed (batch 1, sequence 16)" in proc.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {r["setting"] for r in report["rows"]} == {"b1/s16/t1"}
    assert all(r["quality"].get("cosine") is not None for r in report["rows"])


def test_hub_repo_shipping_onnx_is_taken_from_the_local_cache(tmp_path, onnx_bert, monkeypatch):
    """A hub id whose cached snapshot holds onnx/model.onnx (and no PyTorch weights) is an ONNX teacher, offline."""
    import shutil

    from huggingface_hub import constants

    from compress import teacher

    snapshot = tmp_path / "hub" / "models--acme--tiny-onnx" / "snapshots" / "abc123"
    (snapshot / "onnx").mkdir(parents=True)
    (tmp_path / "hub" / "models--acme--tiny-onnx" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-onnx" / "refs" / "main").write_text("abc123")
    for file in onnx_bert.iterdir():
        if file.is_file():
            shutil.copy2(file, snapshot / ("onnx" if file.name == "model.onnx" else "") / file.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = parse_recipe(f"""version: 1
name: hub
task: sentence-embedding
teacher: {{source: acme/tiny-onnx}}
data: {{source: {tmp_path}}}
stages: [{{kind: quantize}}]
""")
    artifact = teacher.resolve(recipe, tmp_path / "run")
    assert artifact.format == "onnx" and artifact.name == "teacher.onnx"
    assert artifact.metadata["onnx_input"]["output"] == "last_hidden_state"
    assert (artifact.path / "tokenizer.json").is_file() and (artifact.path / "README.md").is_file()


def test_accuracy_search_scores_against_the_onnx_input(tmp_path, onnx_bert, tiny_texts):
    """With no PyTorch teacher the accuracy search measures quality against the fp32 ONNX input (drop budget 0:
    it must search, not stop at 'quality cannot be scored')."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
name: search
task: sentence-embedding
teacher: {{source: {onnx_bert}, license: apache-2.0}}
data: {{source: {tiny_texts}, eval_size: 30, max_length: 16}}
stages:
  - {{kind: quantize, schemes: [int8-dynamic], accuracy: {{max_quality_drop: 0.0, time_budget: 30, eval_size: 30}}}}
""")
    proc = _run(recipe, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["quantize"]["metrics"]
    accuracy = metrics["teacher.int8-dynamic.onnx"]["accuracy"]
    assert accuracy["quality"] is not None and "cannot be scored" not in accuracy["reason"]


def test_plan_refuses_token_states_when_the_config_beside_has_a_dense_layer(tmp_path):
    """sentence-transformers with a Dense layer: pooling last_hidden_state alone would not be the model's embedding."""
    (tmp_path / "2_Dense").mkdir()
    (tmp_path / "2_Dense" / "config.json").write_text(json.dumps({"activation_function": "torch.nn.modules.activation.Tanh"}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    info = onnx_input.inspect(_graph(tmp_path / "m.onnx", TEXT, [("last_hidden_state", 1, ["b", "s", 4])]))
    with pytest.raises(SourceError, match="Dense layer"):
        onnx_input.plan(info, "sentence-embedding", config_dir=tmp_path)


# Issue 34: outputs chosen by what they are. (name, elem_type, dims); 7 int64, 1 float.
ISSUE = [("461", 7, ["b", "s"]), ("462", 7, ["b"]), ("1011", 1, ["b", "s", 384]), ("1013", 1, ["b", 384])]
ST = [("token_embeddings", 1, ["b", "s", 384]), ("sentence_embedding", 1, ["b", 384])]
OPTIMUM = [("last_hidden_state", 1, ["b", "s", 384]), ("pooler_output", 1, ["b", 384])]


@pytest.mark.parametrize("outputs, task, output, chosen", [
    (ISSUE, "sentence-embedding", None, "1013"),  # int64 first: never chosen; the pooled vector
    (ISSUE, "sentence-embedding", "1011", "1011"),  # teacher.output wins (token states, pooled by compress)
    (ISSUE[:3], "sentence-embedding", None, "1011"),  # token states alone
    (ST, "sentence-embedding", None, "sentence_embedding"),
    (OPTIMUM, "sentence-embedding", None, "last_hidden_state"),  # BERT's pooler_output is no sentence embedding
    ([("0", 1, ["b", "s", 8]), ("1", 1, ["b", 8])][::-1] + [("pooler_output", 1, ["b", 8])], "sentence-embedding",
     None, "1"),
    ([("ids", 7, ["b", "s"]), ("scores", 1, ["b", 3])], "text-classification", None, "scores"),
    ([("logits", 1, ["b", 3])], "sentence-embedding", "logits", "logits"),  # teacher.output wins over the name
    ([("output", 1, ["b", 384])], "sentence-embedding", None, "output"),  # as guessed: a name that says nothing
    ([("embedding", 1, ["b", 384]), ("last_hidden_state", 1, ["b", "s", 384])], "sentence-embedding", None,
     "embedding"),  # a compress bundle with token states too
])
def test_plan_chooses_the_output_by_dtype_and_shape(tmp_path, outputs, task, output, chosen):
    info = onnx_input.inspect(_graph(tmp_path / "m.onnx", TEXT, outputs))
    assert onnx_input.plan(info, task, output).output == chosen


@pytest.mark.parametrize("outputs, task, output, error", [
    (ISSUE, "sentence-embedding", "461", "output 461 int64 [b, s] is not float32"),
    ([("7", 1, ["b", "s", 8]), ("9", 1, ["b", "s", 8])], "sentence-embedding", None,
     "2 outputs could be what sentence-embedding needs (7 float [b, s, 8], 9 float [b, s, 8]); set "
     "teacher.output: <one of 7, 9>"),
    ([("a", 1, ["b", 3]), ("c", 1, ["b", 5])], "text-classification", None, "set teacher.output: <one of a, c>"),
    ([("461", 7, ["b", "s"])], "sentence-embedding", None, "no output is a float32 tensor"),
])
def test_plan_names_the_candidates_and_the_key_when_the_output_is_not_clear(tmp_path, outputs, task, output, error):
    info = onnx_input.inspect(_graph(tmp_path / "m.onnx", TEXT, outputs))
    with pytest.raises(SourceError) as caught:
        onnx_input.plan(info, task, output)
    assert error in str(caught.value) and len(str(caught.value).splitlines()) == 1


def _beside(folder: Path, files: dict) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))


TOKENIZER = {"tokenizer.json": "{}", "tokenizer_config.json": "{}"}
ST_FILES = {"modules.json": [], "1_Pooling/config.json": {"pooling_mode": "mean"}}
BERT = {"config.json": {"architectures": ["BertModel"], "hidden_size": 384}}
CLASSIFIER = {"config.json": {"architectures": ["BertForSequenceClassification"],
                              "id2label": {"0": "negative", "1": "neutral", "2": "positive"}}}
LABELS_ONLY = {"config.json": {"id2label": {"0": "negative", "1": "neutral", "2": "positive"}}}


@pytest.mark.parametrize("inputs, outputs, files, task, evidence", [
    # a sentence-transformers model exported by Optimum (library sentence_transformers)
    (TEXT, ST, {**TOKENIZER, **ST_FILES, **BERT}, "sentence-embedding", "sentence_embedding is named as an embedding"),
    # Optimum feature-extraction: token states, with or without BERT's pooler_output
    (TEXT, OPTIMUM[:1], {**TOKENIZER, **BERT}, "sentence-embedding", "last_hidden_state is named as token states"),
    (TEXT, OPTIMUM, {**TOKENIZER, **BERT}, "sentence-embedding", "last_hidden_state is named as token states"),
    # a compress bundle: compress.json says so; without it, the embedding (and token states) say so
    (TEXT, [("embedding", 1, ["b", 384])], {**TOKENIZER, "compress.json": {"task": "sentence-embedding"}},
     "sentence-embedding", "compress.json says so"),
    (TEXT, [("embedding", 1, ["b", 384]), ("last_hidden_state", 1, ["b", "s", 384])], TOKENIZER,
     "sentence-embedding", "embedding is named as an embedding"),
    (TEXT, [("logits", 1, ["b", 3])], {**TOKENIZER, "compress.json": {"task": "text-classification"}},
     "text-classification", "compress.json says so"),
    # classifier exports, with and without id2label
    (TEXT, [("logits", 1, ["b", 3])], {**TOKENIZER, **CLASSIFIER}, "text-classification",
     "architecture BertForSequenceClassification"),
    (TEXT, [("logits", 1, ["b", 2])], TOKENIZER, "text-classification", "logits is named as class scores"),
    (TEXT, [("output_0", 1, ["b", 3])], {**TOKENIZER, **LABELS_ONLY}, "text-classification",
     "id2label has 3 labels, the size of output_0"),
    # the issue's model: int64 outputs first, numeric names, [batch, 384] beside a tokenizer and no labels
    (TEXT, ISSUE, TOKENIZER, "sentence-embedding", "1013 float [batch, 384] beside a tokenizer, with no id2label or "
     "labels config: an embedding, not 384 classes"),
    (TEXT, [("output", 1, ["b", 384])], {**TOKENIZER, **BERT}, "sentence-embedding", "not 384 classes"),
    ([("pixel_values", 1, ["b", 3, 224, 224])], [("logits", 1, ["b", 1000])], {}, "image-classification",
     "no input_ids"),
])
def test_guess_task_reads_real_export_shapes(tmp_path, inputs, outputs, files, task, evidence):
    from compress import quick

    _beside(tmp_path, files)
    _graph(tmp_path / "model.onnx", inputs, outputs)
    guessed, said = quick.guess_task(tmp_path)
    assert guessed == task and evidence in "; ".join(said), said
    onnx_input.plan(onnx_input.inspect(tmp_path / "model.onnx"), guessed, config_dir=tmp_path)  # and it serves it


@pytest.mark.parametrize("written, overrides", [
    ("output: 461", []),
    ("output: '461'", []),
    ("license: apache-2.0", ["teacher.output=461"]),
])
def test_recipe_teacher_output_takes_a_number_as_the_name(tmp_path, written, overrides):
    _graph(tmp_path / "model.onnx", TEXT, ISSUE)
    recipe = parse_recipe(f"""version: 1
name: numbers
task: sentence-embedding
teacher: {{source: {tmp_path / 'model.onnx'}, {written}}}
data: {{source: {tmp_path}}}
stages: [{{kind: quantize}}]
""", overrides=overrides)
    assert recipe.teacher.output == "461"
