"""The recipe's data checked before anything runs: the columns text_field and label_field name, read from the file's
header as pandas would read it; and `compress init` guessing them from the same header."""

from __future__ import annotations

import bz2
import gzip
import json

import pytest
import yaml

from compress import quick
from compress.errors import RecipeError
from compress.inputs import check_paths, read_head
from compress.recipe import load_recipe

ROWS = [{"statement": "we will build it, and quickly", "party": "R", "speaker": "A"},
        {"statement": "no, we will not", "party": "D", "speaker": "B"},
        {"statement": "let us move on to the next question", "party": "M", "speaker": "C"},
        {"statement": "taxes, then", "party": "R", "speaker": "D"}]


def _csv(rows, sep=",") -> str:
    header = list(rows[0])
    quote = lambda v: f'"{v}"' if sep in v else v  # noqa: E731
    return "\n".join([sep.join(header)] + [sep.join(quote(r[h]) for h in header) for r in rows]) + "\n"


WRITERS = {
    "d.csv": lambda p: p.write_text(_csv(ROWS)),
    "d.csv.gz": lambda p: p.write_bytes(gzip.compress(_csv(ROWS).encode())),
    "d.tsv.bz2": lambda p: p.write_bytes(bz2.compress(_csv(ROWS, "\t").encode())),
    "d.jsonl": lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in ROWS)),
    "d.txt": lambda p: p.write_text("one line\nanother\n"),
    "blank.csv": lambda p: p.write_text(",text\n0,hello\n"),
    "bom.csv": lambda p: p.write_bytes(b"\xef\xbb\xbftext,label\nhi,a\n"),
}


@pytest.mark.parametrize("name", WRITERS)
def test_read_head_gives_the_columns_pandas_gives(tmp_path, name):
    from compress.data import read_table

    path = tmp_path / name
    WRITERS[name](path)
    columns, rows = read_head(path, rows=2)
    assert columns == list(read_table(path, name).columns)
    assert len(rows) == 2 if name != "blank.csv" and name != "bom.csv" else len(rows) == 1


@pytest.mark.parametrize("name, content", [
    ("d.parquet", b"PAR1"),                 # not read here: the run reads it
    ("d.csv.gz", b"not gzip at all"),       # damaged: the run says how
    ("d.json", b"[1, 2, 3]\n"),             # a JSON array, not lines
])
def test_read_head_says_nothing_of_what_it_cannot_read(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert read_head(path) is None


@pytest.mark.parametrize("data, problems", [
    ({"text_field": "statement", "label_field": "party"}, []),
    ({"text_field": "text", "label_field": "party"}, ["data.text_field: 'text' is not a column of d.csv"]),
    ({"text_field": "statement", "label_field": "category"}, ["data.label_field: 'category' is not a column"]),
    ({"text_field": "statement", "unlabeled": {"source": "d.jsonl", "text_field": "body"}},
     ["data.unlabeled.text_field: 'body' is not a column of d.jsonl (its columns: statement, party, speaker)"]),
])
def test_check_paths_names_a_missing_column_with_file_line_and_key(tmp_path, tiny_bert, data, problems):
    for name in ("d.csv", "d.jsonl"):
        WRITERS[name](tmp_path / name)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({
        "version": 1, "name": "t", "task": "text-classification", "teacher": {"source": str(tiny_bert)},
        "data": {"source": str(tmp_path / "d.csv"), **data}, "stages": [{"kind": "export"}]}, sort_keys=False))
    if "unlabeled" in data:
        recipe_file.write_text(recipe_file.read_text().replace("source: d.jsonl", f"source: {tmp_path / 'd.jsonl'}"))
    recipe = load_recipe(recipe_file)
    if not problems:
        check_paths(recipe, recipe_file)
        return
    with pytest.raises(RecipeError) as err:
        check_paths(recipe, recipe_file)
    lines = str(err.value).splitlines()
    assert len(lines) == len(problems)
    for line, expected in zip(lines, problems):
        assert line.startswith(f"{recipe_file}:") and expected in line, line


@pytest.mark.parametrize("task, name, text, label", [
    ("text-classification", "d.csv", "statement", "party"),    # names; then the fewest distinct values
    ("text-classification", "d.jsonl", "statement", "party"),
    ("sentence-embedding", "d.tsv.bz2", "statement", None),
    ("causal-lm", "d.txt", "text", None),
])
def test_init_takes_the_fields_from_the_data_file(tmp_path, task, name, text, label):
    path = tmp_path / name
    WRITERS[name](path)
    if name == "d.csv":  # no column named like labels: the one with the fewest distinct values
        path.write_text(_csv([{"statement": r["statement"], "who": r["speaker"], "side": r["party"]} for r in ROWS]
                             + [{"statement": "and so on", "who": "E", "side": "R"}]))
        label = "side"
    data = yaml.safe_load(quick.init_recipe(task, data=str(path)))["data"]
    assert data.get("text_field") == text and data.get("label_field") == label
