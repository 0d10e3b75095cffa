"""Reliability and security (issue 8): hostile recipes, hostile model folders, corrupt ONNX, path escapes,
disk errors, the lock, NaN in the report, and the short version of bench/reliability.py."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress import report, runner
from compress.artifacts import check_name, sha256_path
from compress.errors import CompressError, RecipeError, SourceError, StageError
from compress.recipe import load_recipe, parse_recipe
from compress.sources import check_model_folder, check_onnx

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"version": 1, "name": "demo", "task": "sentence-embedding", "teacher": {"source": "some/model"},
        "data": {"source": "texts.csv"}, "stages": [{"kind": "export"}, {"kind": "bench"}]}
LOCATED = re.compile(r"^(r\.yaml:\d+|--set): ")


def good_text(**changes) -> str:
    return yaml.safe_dump({**GOOD, **changes}, sort_keys=False)


def bomb(width: int, levels: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines)


@pytest.mark.parametrize(
    "text, expected",
    [
        (bomb(9, 9), "r.yaml:1: more than 100,000 values once aliases are expanded"),
        ("a: " + "[" * 5000 + "]" * 5000, "r.yaml:1: nested more than 64 levels deep"),
        ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 80)) + "  " * 80 + "v", "nested more than 64"),
        ("version: " + "9" * 5000, "r.yaml:1: a 5000-digit number is too large"),
        (good_text(stages=[{"kind": "export"}, {"kind": "bench", "min_seconds": float("inf")}]),
         "stages[1].min_seconds: inf is not a finite number"),
        (good_text(stages=[{"kind": "export"}, {"kind": "bench", "min_seconds": "1e400"}]), "is not a finite number"),
        (good_text(stages=[{"kind": "export"}, {"kind": "bench", "warmup": 2**70}]), "too large (more than 2**63"),
        ("version: !!python/object/apply:os.system ['echo pwned']", "r.yaml:1: could not determine a constructor"),
        ("version: !foo 1", "r.yaml:1: could not determine a constructor for the tag '!foo'"),
        ("version: 1\nname: x\x07\n", "r.yaml:2: character #x0007 is not allowed"),
        ("{[1, 2]: 3}", "r.yaml:1: found unhashable key"),
        (good_text(stages=[{"kind": "bench", "providers": list(range(500))}] * 40), "... and"),
    ],
)
def test_parse_recipe_refuses_hostile_yaml_fast_with_file_line(text, expected):
    # CPU time, not wall time: what matters is that no input makes the parser blow up (an alias bomb would
    # take minutes), and a busy neighbour on a 2-core CI machine must not read as that.
    started = time.process_time()
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    assert time.process_time() - started < 5.0
    assert expected in str(info.value)
    assert all(LOCATED.match(line) or line.startswith("... and") for line in str(info.value).splitlines())


yaml_trees = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
              st.sampled_from(["1e400", ".nan", "9" * 80, "!!python/name:os.system"])),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=15,
)
KEY_PATHS = [("version",), ("name",), ("teacher",), ("teacher", "source"), ("data", "eval_size"), ("stages",),
             ("stages", 1, "warmup"), ("stages", 1, "providers"), ("gates",)]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(
    st.builds(lambda tree: yaml.safe_dump(tree), yaml_trees),
    st.builds(lambda path, value: _replace(path, value), st.sampled_from(KEY_PATHS), yaml_trees),
    st.text(max_size=200),
))
def test_parse_recipe_property_only_recipe_errors_with_a_line(text):
    started = time.process_time()
    try:
        parse_recipe(text, "r.yaml")
    except RecipeError as exc:
        assert all(LOCATED.match(line) or line.startswith("... and") for line in str(exc).splitlines()), str(exc)
    assert time.process_time() - started < 5.0


def _replace(path: tuple, value) -> str:
    data = json.loads(json.dumps(GOOD))
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("version: 1\nname: café\n".encode("latin-1"), "recipe.yaml:2: not UTF-8 text"),
        (b"# " + b"x" * (2 << 20), "recipe.yaml:1: larger than 1024 KiB"),
    ],
)
def test_load_recipe_refuses_bad_bytes_with_file_line(tmp_path, raw, expected):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(raw)
    with pytest.raises(RecipeError, match=re.escape(expected)):
        load_recipe(path)


def test_override_refuses_a_huge_number(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(good_text())
    with pytest.raises(RecipeError, match="--set stages.1.warmup: a 5000-digit number is too large"):
        load_recipe(path, ["stages.1.warmup=" + "9" * 5000])


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_exits_2_without_traceback_on_an_alias_bomb(tmp_path, command):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(9, 9))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "compress.cli", command, str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}:1: more than 100,000 values" in proc.stderr
    assert time.monotonic() - started < 20


# ---------------------------------------------------------------- hostile model folders


def pickle_model(tiny_bert: Path, dest: Path) -> Path:
    from transformers import BertModel

    shutil.copytree(tiny_bert, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    BertModel.from_pretrained(tiny_bert).save_pretrained(dest, safe_serialization=False)
    return dest


def test_check_model_folder_refuses_pickle_only_weights_unless_allowed(tiny_bert, tmp_path):
    from compress.tasks import sentence_embedding

    folder = pickle_model(tiny_bert, tmp_path / "pickled")
    with pytest.raises(SourceError, match="teacher.allow_pickle: true"):
        check_model_folder(folder)
    assert check_model_folder(folder, allow_pickle=True)["weights"] == "pickle"
    assert check_model_folder(tiny_bert)["weights"] == "safetensors"
    sentence_embedding.load_model(folder)  # allowed: loads (transformers reads it with weights_only=True)


def test_load_model_refuses_a_pickle_payload_even_when_pickles_are_allowed(tiny_bert, tmp_path):
    import torch

    from compress.tasks import sentence_embedding

    folder = pickle_model(tiny_bert, tmp_path / "exploit")
    marker = tmp_path / "PICKLE_RAN"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"embeddings.word_embeddings.weight": Exploit()}, folder / "pytorch_model.bin")
    with pytest.raises(SourceError, match=r"weights_only=True"):
        sentence_embedding.load_model(folder)
    assert not marker.exists()


def remote_code_model(tiny_bert: Path, dest: Path, marker: Path) -> Path:
    shutil.copytree(tiny_bert, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(model_type="evil-bert", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertConfig, "
                                  "BertModel\nclass EvilConfig(BertConfig):\n    model_type = 'evil-bert'\n"
                                  "class EvilModel(BertModel):\n    config_class = EvilConfig\n")
    return dest


def test_load_model_runs_remote_code_only_when_trusted(tiny_bert, tmp_path):
    from compress.tasks import sentence_embedding

    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = remote_code_model(tiny_bert, tmp_path / "evil", marker)
    with pytest.raises(SourceError, match="teacher.trust_remote_code: true"):
        sentence_embedding.load_model(folder)
    assert not marker.exists()
    assert check_model_folder(folder)["remote_code"] == ["evil.py"]
    sentence_embedding.load_model(folder, trust_remote_code=True)
    assert marker.exists()


def test_runner_refuses_a_pickle_only_teacher_before_any_stage(tiny_bert, tiny_texts, tmp_path):
    folder = pickle_model(tiny_bert, tmp_path / "pickled")
    recipe = parse_recipe(good_text(teacher={"source": str(folder)}, data={"source": str(tiny_texts)}))
    with pytest.raises(SourceError, match="allow_pickle"):
        runner.run(recipe, tmp_path / "run", console=_quiet())
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.parametrize("trust, expected", [(False, "trust_remote_code off"), (True, "trust_remote_code ON")])
def test_report_states_whether_remote_code_was_allowed(tmp_path, trust, expected):
    manifest = {"recipe": {**GOOD, "teacher": {"source": "m", "trust_remote_code": trust}},
                "artifacts": {"teacher": {"metadata": {"remote_code": [], "weights": "safetensors"}}}}
    built = report.build_report(tmp_path, manifest)
    assert built["trust"]["trust_remote_code"] is trust
    assert expected in report.render_markdown(built)


# ---------------------------------------------------------------- corrupt ONNX, path escapes


def tiny_onnx(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("damage", ["empty", "truncated-10", "truncated-50", "truncated-99", "text"])
def test_check_onnx_names_a_corrupt_file(tmp_path, damage):
    path = tiny_onnx(tmp_path / "model.onnx")
    data = path.read_bytes()
    cut = {"empty": b"", "text": b"hello, not a protobuf\n" * 50}.get(damage)
    path.write_bytes(cut if cut is not None else data[: len(data) * int(damage.split("-")[1]) // 100])
    with pytest.raises(StageError, match=re.escape(str(path))):
        check_onnx(path)


def test_check_onnx_accepts_a_whole_file(tmp_path):
    check_onnx(tiny_onnx(tmp_path / "model.onnx"))


@pytest.mark.parametrize("name", ["../escape", "..", ".", "a/b", "/etc/passwd", "a\\b", ".hidden", ""])
def test_artifact_names_cannot_escape_the_run_dir(name):
    with pytest.raises(CompressError):
        check_name(name)


@pytest.mark.parametrize("field", ["name", "stage"])
def test_recipe_names_cannot_escape_the_run_dir(field):
    stages = [{"kind": "export", "name": "../x"}] if field == "stage" else GOOD["stages"]
    with pytest.raises(RecipeError):
        parse_recipe(good_text(**({"name": "../x"} if field == "name" else {"stages": stages})))


def test_cached_ignores_a_manifest_pointing_outside_the_run_dir(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("not an artifact")
    manifest = {"stages": {"export": {"key": "k", "status": "done", "artifacts": ["teacher.onnx"]}},
                "artifacts": {"teacher.onnx": {"name": "teacher.onnx", "path": "../outside", "format": "onnx",
                                               "sha256": sha256_path(outside)}}}
    assert runner._cached(manifest, "export", "k", tmp_path / "run") is None


# ---------------------------------------------------------------- disk errors, the lock


@pytest.mark.parametrize(
    "code, expected",
    [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk full"), (errno.EFBIG, "disk full"),
     (errno.EROFS, "cannot write"), (errno.EACCES, "cannot write"), (errno.ENOTDIR, "cannot write")],
)
def test_disk_errors_become_messages(tmp_path, code, expected):
    with pytest.raises(CompressError, match=expected), runner.disk_errors(tmp_path):
        raise OSError(code, os.strerror(code), str(tmp_path / "x"))


def test_runner_reports_an_unwritable_out_dir(tmp_path, tiny_bert, tiny_texts):
    (tmp_path / "file").write_text("a file, not a folder")
    recipe = parse_recipe(good_text(teacher={"source": str(tiny_bert)}, data={"source": str(tiny_texts)}))
    with pytest.raises(CompressError, match="cannot write"):
        runner.run(recipe, tmp_path / "file" / "run", console=_quiet())


def test_atomic_write_under_a_file_size_limit_is_a_message_and_leaves_nothing(tmp_path):
    code = ("import resource, signal, sys; from pathlib import Path; from compress import runner; "
            "from compress.artifacts import write_text_atomic\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "with runner.disk_errors(Path(sys.argv[1])):\n    write_text_atomic(Path(sys.argv[1]) / 'big.txt', 'x' * 100000)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "disk full" in proc.stderr and "File too large" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_run_refuses_a_run_dir_locked_by_another_process(tmp_path, tiny_bert, tiny_texts):
    from compress.rundir import MARKER, claim

    run_dir = tmp_path / "run"
    claim(run_dir)  # compress's run directory: a lone .lock claims no folder (issue 29)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; h = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(run_dir / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(good_text(teacher={"source": str(tiny_bert)}, data={"source": str(tiny_texts)}))
        proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(run_dir)],
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1 and "in use by another compress run" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([MARKER, ".lock"])  # it wrote nothing


# ---------------------------------------------------------------- NaN and divergence in the report


def test_report_flags_nan_and_diverging_variants_and_never_recommends_them(tmp_path):
    def row(variant, p50, cosine, runtime="onnxruntime", role="student", **quality):
        return {"id": variant, "variant": variant, "role": role, "precision": "fp32", "source": None,
                "runtime": runtime, "provider": "cpu" if runtime == "torch" else "CPUExecutionProvider",
                "provider_used": None, "status": "ok", "reason": None, "batch_size": 1, "seq_len": 16, "threads": 1,
                "latency_ms": {"p50": p50, "p90": p50, "p99": p50, "rounds_p50": [p50]}, "size_mb": 1.0,
                "quality": {"cosine": cosine, **quality}}
    rows = [row("teacher", 10.0, 1.0, runtime="torch", role="teacher"), row("nan", 1.0, None, nonfinite_outputs=512),
            row("diverged", 2.0, 0.6), row("good", 5.0, 0.995)]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps({"environment": {}, "settings": {}, "rows": rows}))
    manifest = {"recipe": GOOD, "artifacts": {"bench": {"name": "bench", "path": "bench", "format": "bench"}}}
    built = report.build_report(tmp_path, manifest)
    flags = {r["variant"]: r["flags"] for r in built["rows"]}
    assert "NaN" in flags["nan"]
    assert any(f.startswith("quality drop over") for f in flags["diverged"])
    assert built["recommendation"]["variant"] == "good"


# ---------------------------------------------------------------- the script (short version, as in CI)


@pytest.mark.slow
def test_reliability_script_short_version_finds_nothing_open(tmp_path):
    out = tmp_path / "reliability.md"
    proc = subprocess.run([sys.executable, "-m", "bench.reliability", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "**Open failures: 0.**" in text
    for title in ("Bad recipes", "Faults mid-run", "Disk full", "Hostile models", "Resource bounds", "Concurrency"):
        assert f"## {title}" in text


def _quiet():
    from rich.console import Console

    return Console(stderr=True, quiet=True)


@pytest.mark.parametrize(("fresh_failures", "expected_open"), [([], 0), (["a case failed"], 1)])
def test_reliability_merge_into_replaces_one_category_and_keeps_the_others(fresh_failures, expected_open):
    from bench import reliability as rel

    old = rel.Category("inputs", "Inputs title", cases=5)
    kept = rel.Category("recipes", "Recipes title", cases=7, notes=["a note that must survive"])
    document = rel.render([kept, old], "full", 100.0, 8)
    fresh = rel.Category("inputs", "Inputs title", cases=9, failures=list(fresh_failures), notes=["new note"])

    merged = rel.merge_into(document, [fresh], "full", 12.0)

    assert "| Inputs title | 9 |" in merged and "| Inputs title | 5 |" not in merged
    assert "| Recipes title | 7 |" in merged and "a note that must survive" in merged
    assert "new note" in merged and merged.count("## Inputs title") == 1
    assert f"**Open failures: {expected_open}.**" in merged
    assert merged.index("## Inputs title") < merged.index("## Method")
    assert "Re-run since: inputs" in merged
