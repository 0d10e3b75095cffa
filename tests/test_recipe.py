"""Recipe loading: errors name file:line and key path; overrides; round trips; the chain check."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from compress.errors import RecipeError
from compress.recipe import Recipe, dump_recipe, load_recipe, parse_recipe
from compress.stages import STAGES

GOOD = textwrap.dedent(
    """\
    version: 1
    name: demo
    task: sentence-embedding
    teacher: {source: some/model}
    data: {source: texts.csv}
    stages:
      - kind: export
      - kind: quantize
        schemes: [int8-dynamic]
      - kind: bench
    """
)


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("    schemes: [int8-dynamic]", "    schemes: [int3]"), "recipe.yaml:9: stages[1].schemes[0]: 'int3' is not one of"),
        (("name: demo", "name: demo\ncolour: red"), "recipe.yaml:3: colour: unknown key 'colour' (allowed: version"),
        (("  - kind: bench", "  - kind: bench\n    rounds: many"), "recipe.yaml:11: stages[2].rounds: input should be a valid integer"),
        (("  - kind: bench", "  - kind: benchmark"), "recipe.yaml:10: stages[2]: unknown stage kind 'benchmark'"),
        (("data: {source: texts.csv}", "data: {source: [texts.csv"), "recipe.yaml:6: YAML syntax error"),
        (("teacher: {source: some/model}", "teacher: {source: some/model, licence: mit}"), "recipe.yaml:4: teacher.licence: unknown key"),
        (("task: sentence-embedding", "task: translation"), "recipe.yaml:3: task: 'translation' is not one of"),
        (("name: demo", "name: demo\nname: again"), "recipe.yaml:3: key 'name' appears twice"),
        (("  - kind: export\n", ""), None),  # quantize then needs an onnx artifact: chain error
    ],
)
def test_load_recipe_names_file_line_and_key(tmp_path, edit, expected):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    if expected is None:
        assert "needs a onnx artifact" in message and "stages[0]" in message
    else:
        assert message.startswith(str(tmp_path / expected)), message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    "override, check",
    [
        ("stages.2.rounds=5", lambda r: r.stages[2].rounds == 5),
        ("stages.1.schemes=[int8-dynamic, fp16]", lambda r: r.stages[1].schemes == ["int8-dynamic", "fp16"]),
        ("data.eval_size=10", lambda r: r.data.eval_size == 10),
        ("gates.min_speedup=2.5", lambda r: r.gates.min_speedup == 2.5),
    ],
)
def test_override_sets_values(tmp_path, override, check):
    recipe = load_recipe(write(tmp_path, GOOD), [override])
    assert check(recipe)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("stages.9.rounds=5", "is not an index of a 3-item list"),
        ("nothing", "expected KEY=VALUE"),
        ("stages.1.schemes.0=int2", "--set: stages[1].schemes[0]: 'int2' is not one of"),
        ("foo.bar=1", "--set: foo: unknown key 'foo'"),
    ],
)
def test_override_errors_are_readable(tmp_path, override, expected):
    with pytest.raises(RecipeError, match=None) as info:
        load_recipe(write(tmp_path, GOOD), [override])
    assert expected in str(info.value)


def test_stage_names_default_to_kind_and_number_repeats():
    recipe = parse_recipe(GOOD.replace("  - kind: bench", "  - kind: bench\n  - kind: bench"))
    assert [s.name for s in recipe.stages] == ["export", "quantize", "bench", "bench-2"]


def test_recipe_round_trips_through_yaml():
    recipe = parse_recipe(GOOD)
    again = parse_recipe(dump_recipe(recipe))
    assert again == recipe and again.fingerprint() == recipe.fingerprint()


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_stage_config_round_trips_through_yaml(kind):
    config_cls = STAGES[kind].config
    required = {"distill": {"student": {"from_teacher": {"layers": [0, 2]}}}}.get(kind, {})
    config = config_cls.model_validate({"kind": kind, **required})
    text = yaml.safe_dump(config.model_dump(mode="json"))
    assert config_cls.model_validate(yaml.safe_load(text)) == config


def test_every_field_has_a_description():
    # Field descriptions are the single source of help text (CLI, docs, JSON schema).
    models = [Recipe, *(spec.config for spec in STAGES.values())]
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not field.description and name != "kind"
    ]
    assert missing == []


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted(Path(__file__).parent.parent.glob("recipes/*.yaml"))
    assert recipes
    for path in recipes:
        load_recipe(path)


@pytest.mark.parametrize("args", [["--help"], ["validate", "recipes/quickstart.yaml"], ["schema"]])
def test_cli_light_commands_do_not_import_torch_or_onnxruntime(args):
    code = (
        "import sys; from compress.cli import main; sys.argv=['compress', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'datasets', 'pyarrow') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_cli_validate_exits_2_without_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("schemes: [int8-dynamic]", "schemes: [int3]"))
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "stages[1].schemes[0]: 'int3'" in proc.stderr and "Traceback" not in proc.stderr


def test_recipe_unlabeled_texts_only_for_text_tasks():
    from compress.errors import RecipeError
    from compress.recipe import parse_recipe

    text = ("version: 1\nname: r\ntask: image-classification\nteacher: {source: m}\n"
            "data: {source: d, unlabeled: {source: more.txt}}\nstages: [{kind: export}]\n")
    with pytest.raises(RecipeError, match="data.unlabeled: task image-classification does not take unlabelled"):
        parse_recipe(text)
