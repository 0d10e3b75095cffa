"""Reliability, issue 20: nothing lost, nothing silently wrong. Each case runs the `compress` command as a user would,
on a folder prepared for it, and checks: the documented exit code, exactly one readable message (one `error:` or
`interrupted` line, no traceback), and every file the command did not create left as it was (a snapshot of the
folder's files, links and hashes before and after).

Used by bench/reliability.py (category "inputs") and, case by case, by tests/test_reliability_inputs.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600
LOCATED = re.compile(r"^\S+\.ya?ml:\d+: ")  # a recipe error's further lines, one per problem


@dataclass(frozen=True)
class Inputs:
    """What the cases start from: a tiny model folder, a text CSV, a finished run (export, quantize, bench) of
    `recipe` (paths absolute)."""

    model: Path
    texts: Path
    recipe: Path
    done: Path


@dataclass(frozen=True)
class Case:
    name: str
    what: str  # one line for docs/reliability.md
    prepare: Callable[[Path, Inputs], list[str]]  # make the case's files in the work folder; returns the arguments
    code: int
    message: str  # what the one message must say
    ours: tuple[str, ...] = ()  # paths (relative to the work folder) the command may create or change
    keep: tuple[str, ...] = ()  # paths inside `ours` that must survive unchanged all the same
    signal: str | None = None  # send this signal once `wait_for` shows in stderr (or a child process appears)
    wait_for: str = ""
    short: bool = True  # part of the CI (short) version
    messages: int = 1  # one line per problem: `error:` or `interrupted`, then file:line lines of the same error


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


# ---------------------------------------------------------------- the snapshot


def snapshot(folder: Path, skip: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> dict[str, str]:
    """relative path -> what it is (file hash, link target, folder) for everything under `folder` except `skip`
    paths (kept when listed in `keep`)."""
    found = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(base) / name
            rel = str(path.relative_to(folder))
            if any(rel == s or rel.startswith(s + "/") for s in skip) and rel not in keep:
                continue
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [f"{rel} {'deleted' if rel not in after else 'changed'}" for rel, what in before.items()
            if after.get(rel) != what]


# ---------------------------------------------------------------- running one case


def run_case(case: Case, work: Path, inputs: Inputs) -> tuple[list[str], str]:
    """Prepare `case` in `work` (an empty folder), run it; return (problems, the message line)."""
    args = case.prepare(work, inputs)
    before = snapshot(work, case.ours, case.keep)
    dev_null = os.stat("/dev/null")
    command = [sys.executable, "-m", "compress.cli", *args]
    if case.signal:
        code, stderr = _run_signalled(command, work, case)
    else:
        proc = subprocess.run(command, cwd=work, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
        code, stderr = proc.returncode, proc.stderr
    problems = []
    messages = [line for line in stderr.splitlines() if line.startswith(("error:", "interrupted"))
                or LOCATED.match(line)]
    message = messages[0] if messages else ""
    if code != case.code:
        problems.append(f"exit {code}, expected {case.code}")
    if "Traceback" in stderr:
        problems.append("a traceback: " + stderr.strip().splitlines()[-1][:200])
    if case.code and len(messages) != case.messages:
        problems.append(f"{len(messages)} message lines, expected {case.messages}: {stderr.strip()[-300:]!r}")
    if case.message not in stderr:
        problems.append(f"the message does not say {case.message!r}: {(message or stderr.strip()[-300:])!r}")
    problems += changed(before, snapshot(work, case.ours, case.keep))
    now = os.stat("/dev/null")
    if (now.st_mode, now.st_rdev) != (dev_null.st_mode, dev_null.st_rdev):
        problems.append("/dev/null was replaced")
    return problems, message


def _run_signalled(command: list[str], work: Path, case: Case) -> tuple[int, str]:
    """Start `command`, wait until a child process runs (`wait_for` in its command line), send the signal to the
    parent only, and check that the child ended with it."""
    proc = subprocess.Popen(command, cwd=work, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    child, deadline = None, time.monotonic() + TIMEOUT
    while child is None and proc.poll() is None and time.monotonic() < deadline:
        child = _find_process(case.wait_for, str(work))
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(getattr(signal, case.signal))
    _, stderr = proc.communicate(timeout=TIMEOUT)
    if child is None:
        stderr += "\n(no child process seen: the signal was not sent while one ran)"
    else:
        time.sleep(1.0)
        if _alive(child):
            stderr += f"\nchild process {child} outlived its parent"
            os.kill(child, signal.SIGKILL)
    return proc.returncode, stderr


def _find_process(needle: str, where: str) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and where in cmdline:
            return int(pid)
    return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except OSError:
        return False


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
    # --- signals
    Case("sigterm_in_export", "SIGTERM while export's parity subprocess runs",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(w / "run")], 143,
         "interrupted (SIGTERM) in export", ours=("run",), signal="SIGTERM", wait_for="compress.stages._parity"),
    Case("sigint_in_export", "Ctrl-C (SIGINT) while export's parity subprocess runs",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(w / "run")], 130,
         "interrupted (Ctrl-C) in export", ours=("run",), signal="SIGINT", wait_for="compress.stages._parity",
         short=False),
]


def case_named(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def check_inputs(cat, work: Path, inputs: Inputs, full: bool) -> None:
    """Run the cases (the short version: those marked short) into `cat` (bench.reliability.Category)."""
    seconds = []
    for case in CASES:
        if not full and not case.short:
            continue
        folder = work / case.name
        folder.mkdir()
        started = time.monotonic()
        problems, message = run_case(case, folder, inputs)
        seconds.append(time.monotonic() - started)
        cat.check(not problems, f"{case.what}: {'; '.join(problems)}")
        outcome = f"exit {case.code}" + (f", '{_short(message, folder, inputs)}'" if message else "")
        cat.notes.append(f"{case.what}: {outcome}")
    cat.notes.append(f"each case: the documented exit code, exactly one message line and no traceback, and every "
                     f"file it did not create unchanged (folder snapshot before/after); slowest case "
                     f"{max(seconds):.0f} s")


def _short(message: str, folder: Path, inputs: Inputs, limit: int = 160) -> str:
    message = message.removeprefix("error: ")
    for root in (str(folder) + "/", str(inputs.done.parent) + "/", str(ROOT) + "/"):
        message = message.replace(root, "")
    return message if len(message) <= limit else message[: limit - 3] + "..."



# Found by issue 20 (a hostile new user's ~80 cases), fixed, and listed in docs/reliability.md.
FIXED = [
    "`compress schema --out DIR` and `compress gate --comment DIR` deleted the folder and everything in it "
    "(atomic_path ran rmtree on a folder target): a file never replaces a folder; an existing file compress did "
    "not write needs --force",
    "`compress run --out` a folder of someone else's files overwrote their report.md and deleted their .tmp-* "
    "files: such a folder is refused; a run directory is marked (.compress-run) before anything in it is "
    "replaced, and only compress's own temporaries (.compress-tmp-*) are cleaned",
    "a teacher folder with config.json only, an invalid config.json, a truncated .safetensors, no tokenizer or an "
    "unknown model_type ended in 150-900-line tracebacks: one sentence each, before any stage, exit 2",
    "`--out` an existing file or /dev/null, `compress report FILE`, an artifact replaced by a symbolic link, "
    "`--summary DIR`: tracebacks; now one sentence, exit 2",
    "a tokenizer.json linked to a file outside the model folder was read: refused unless "
    "teacher.allow_external_links",
    "a CSV with a blank label cell crashed (pandas 3 keeps NaN through astype(str)) and turned labels into "
    "\"0.0\"/\"1.0\": a blank label is an error naming its line; labels stay \"0\"/\"1\"",
    "a .jsonl whose texts were numbers, lists, objects or null was stringified and trained on: an error naming "
    "the line; one class or more than 1,000 classes in the label column: one sentence",
    "a teacher with a layer's weights missing was reported as a parity failure (\"try optimize: false\"): now "
    "\"the checkpoint lacks N of the model's weights\"",
    "Ctrl-C and SIGTERM exited 130/143 without a word (typer swallowed the KeyboardInterrupt) and SIGTERM "
    "orphaned export's parity subprocess: one line naming the signal and the stage, and children end with "
    "the parent (and die with it on SIGKILL)",
    "`compress validate` said ok for a recipe whose teacher and data did not exist, and a missing data file "
    "exited 1 without file:line: both are file:line messages, exit 2",
]
