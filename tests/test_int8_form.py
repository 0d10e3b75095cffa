"""int8-dynamic's graph form per CPU (compress/int8_form.py, issue 33): the rule, the interleaved timing with a
mocked clock, the choice, and the quantize stage on a tiny fused BERT taking the chosen form."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_bert
from test_quantize import _texts_csv

from compress import int8_form
from compress.artifacts import Artifact, sha256_path
from compress.context import RunContext
from compress.recipe import parse_recipe
from compress.stages import export, quantize


@pytest.mark.parametrize("arch, flags, form", [
    ("x86_64", {"avx2": True, "avx512f": True, "avx512_vnni": True}, "matmul-integer"),
    ("x86_64", {"avx2": True, "avx_vnni": True}, "matmul-integer"),
    ("x86_64", {"avx2": True, "avx512f": True}, "fused"),
    ("x86_64", {"avx2": True}, "fused"),
    ("arm64", {"dotprod": True}, "fused"),
])
def test_int8_form_rule_follows_cpu_flags(arch, flags, form):
    chosen, why = int8_form.rule({"arch": arch, "flags": flags, "model": "cpu"})

    assert chosen == form and why


@pytest.mark.parametrize("timings, cosines, form, says", [
    ({"fused": {"b1": 14.0, "b32": 620.0}, "matmul-integer": {"b1": 9.3, "b32": 460.0}},
     {"fused": 0.986, "matmul-integer": 0.988}, "matmul-integer", "faster than fused"),
    ({"fused": {"b1": 10.0}, "matmul-integer": {"b1": 9.8}}, {}, "fused", "only 2.0% faster"),
    ({"fused": {"b1": 9.0, "b32": 400.0}, "matmul-integer": {"b1": 10.0, "b32": 410.0}}, {}, "fused",
     "measured fastest here"),
    ({"fused": {"b1": 14.0}, "matmul-integer": {"b1": 9.0}}, {"fused": 0.99, "matmul-integer": 0.98}, "fused",
     "loses 1.00 points of cosine"),
])
def test_int8_form_choose_keeps_the_faster_form_within_quality(timings, cosines, form, says):
    chosen, why = int8_form.choose(timings, cosines)

    assert chosen == form and says in why


def test_int8_form_measure_interleaves_forms_and_takes_medians():
    """A fake clock advancing by the form's cost: each round times A then B, the result is the median."""
    order, now = [], [0.0]
    cost = {"fused": [0.010, 0.030, 0.011, 0.012, 0.010], "matmul-integer": [0.005, 0.006, 0.020, 0.005, 0.005]}

    def call(form):
        def run():
            order.append(form)
            now[0] += cost[form][(order.count(form) - 1) // 2]  # round r: warm-up and timed run alike
        return run

    calls = {form: {"b1": call(form)} for form in cost}

    got = int8_form.measure(calls, budget_s=1e9, clock=lambda: now[0], iterations=1, rounds=5)

    assert order[:4] == ["fused", "fused", "matmul-integer", "matmul-integer"]  # warm-up + timed, A then B
    assert got["fused"]["b1"] == pytest.approx(11.0) and got["matmul-integer"]["b1"] == pytest.approx(5.0)


def test_int8_form_measure_stops_at_the_time_budget():
    now = [0.0]

    def run():
        now[0] += 10.0

    got = int8_form.measure({"fused": {"b1": run}}, budget_s=1.0, clock=lambda: now[0], iterations=1, rounds=50)

    assert got == {"fused": {"b1": 10000.0}}  # stopped after MIN_ROUNDS, not 50


@pytest.fixture(scope="module")
def fused_bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8form")
    model_dir = make_tiny_bert(root / "tiny-bert")
    recipe = parse_recipe(f"""
version: 1
name: tiny
task: sentence-embedding
teacher: {{source: {model_dir}}}
data: {{source: {_texts_csv(root / "texts.csv")}, eval_size: 16, max_length: 32}}
stages:
  - kind: export
  - kind: quantize
  - kind: bench
    batch_sizes: [1, 4]
    seq_lens: [16]
""")
    teacher = Artifact("teacher", model_dir, "hf-model", sha256_path(model_dir), {"role": "teacher"})
    ctx = RunContext(run_dir=root / "run", recipe=recipe, stage_name="export", artifacts={"teacher": teacher})
    [bundle] = export.run(export.Config(optimize=True, parity_texts=4), ctx)
    return recipe, {"teacher": teacher, bundle.name: bundle}


def _timed(fast: str):
    def measure(calls, budget_s, **_):
        assert set(calls) == set(int8_form.FORMS) and set(calls["fused"]) == {"b1/s16/1t", "b4/s16/1t"}
        for by in calls.values():
            for call in by.values():
                call()  # the sessions and feeds built for the timing run
        return {form: {k: 5.0 if form == fast else 10.0 for k in by} for form, by in calls.items()}
    return measure


@pytest.mark.parametrize("form, fast, chosen, standard", [
    ("fused", None, "fused", False),
    ("matmul-integer", None, "matmul-integer", True),
    ("measure", "matmul-integer", "matmul-integer", True),
    ("measure", "fused", "fused", False),
])
def test_quantize_int8_dynamic_takes_the_chosen_form(fused_bert, tmp_path, monkeypatch, form, fast, chosen,
                                                     standard):
    recipe, artifacts = fused_bert
    if fast:
        monkeypatch.setattr(int8_form, "measure", _timed(fast))
    ctx = RunContext(run_dir=tmp_path / "run", recipe=recipe, stage_name="quantize", artifacts=dict(artifacts))

    [out] = quantize.run(quantize.Config(schemes=["int8-dynamic"], check_size=8, int8={"form": form}), ctx)

    options = out.metadata["scheme_options"]
    assert options["form"] == chosen and options["form_why"]
    assert out.metadata["runtimes"]["standard_onnx"] is standard
    assert json.loads((out.path / "compress.json").read_text())["precision"] == "int8-dynamic"
    assert out.metadata["check"]["cosine"] > 0.98
