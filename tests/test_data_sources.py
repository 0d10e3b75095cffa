"""Data sources beyond text files: Parquet, `datasets` save_to_disk folders, hf:<name> hub datasets (offline)."""

from __future__ import annotations

import pytest

from compress.data import load_dataset
from compress.errors import SourceError
from compress.recipe import DataConfig
from compress.sources import resolve_local

NAMES = ["neg", "pos"]


def rows(n: int, tag: str = "") -> dict:
    """n texts that carry their label: "neg review 3" has label 0 (neg)."""
    return {"text": [f"{NAMES[i % 2]} review {tag}{i}" for i in range(n)], "label": [i % 2 for i in range(n)]}


def check_labels(data, names: list[str]) -> None:
    assert data.label_names == names
    for split in (data.train, data.eval):
        assert [t.split()[0] for t in split.texts] == [names[i] for i in split.labels]


def save_dataset(path, columns: dict, class_label: bool = True):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=NAMES) if class_label else datasets.Value("int64")})
    table = datasets.Dataset.from_dict(columns, features=features)
    table.save_to_disk(str(path))
    return path


def save_dataset_dict(path, splits: dict[str, int]):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    tables = {name: datasets.Dataset.from_dict(rows(n, tag=name), features=features) for name, n in splits.items()}
    datasets.DatasetDict(tables).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def dataset_dict(tmp_path_factory):
    return save_dataset_dict(tmp_path_factory.mktemp("dd") / "reviews", {"train": 40, "validation": 12, "test": 8})


@pytest.mark.parametrize(
    "label_field, labels, names, total",
    [
        (None, None, None, 30),
        ("sentiment", None, ["neg", "pos"], 30),             # every label, sorted
        ("sentiment", ["pos", "neg"], ["pos", "neg"], 30),   # the recipe's order gives the ids
        ("sentiment", ["pos"], ["pos"], 15),                 # unlisted labels dropped
    ],
)
def test_load_dataset_reads_parquet(tmp_path, label_field, labels, names, total):
    import pandas as pd

    path = tmp_path / "reviews.parquet"
    table = rows(30)
    pd.DataFrame({"text": table["text"] + ["", None], "sentiment": [NAMES[i] for i in table["label"]] + ["neg"] * 2,
                  "extra": range(32)}).to_parquet(path)
    data = load_dataset(DataConfig(source=str(path), label_field=label_field, labels=labels, eval_size=5, seed=1))
    assert len(data.train.texts) + len(data.eval.texts) == total  # empty texts dropped
    assert len(data.eval.texts) == 5
    if names is None:
        assert data.label_names is None and data.train.labels is None
    else:
        check_labels(data, names)
    assert data == load_dataset(DataConfig(source=str(path), label_field=label_field, labels=labels, eval_size=5,
                                           seed=1))


@pytest.mark.parametrize(
    "class_label, labels, names",
    [
        (True, None, ["neg", "pos"]),     # ClassLabel names in id order
        (True, ["pos", "neg"], ["pos", "neg"]),
        (False, None, ["0", "1"]),        # plain integers: their text, sorted
    ],
)
def test_load_dataset_reads_a_saved_dataset_with_classlabel_names(tmp_path, class_label, labels, names):
    table = rows(20)
    table["text"].append("neg review without a label")
    table["label"].append(-1 if class_label else 7)  # -1: no label (as in many test splits), dropped
    path = save_dataset(tmp_path / "ds", table, class_label=class_label)
    data = load_dataset(DataConfig(source=str(path), label_field="label", labels=labels, eval_size=4))
    if class_label:
        check_labels(data, names)
        assert len(data.train.texts) + len(data.eval.texts) == 20
    else:
        assert data.label_names == ["0", "1", "7"]


@pytest.mark.parametrize(
    "split, eval_split, train_tag, eval_tag, n_train, n_eval",
    [
        (None, None, "train", "train", 34, 6),                  # default: train, eval held out of it
        ("validation", None, "validation", "validation", 6, 6),
        (None, "test", "train", "test", 40, 6),                 # eval rows from another split, train keeps all
        ("train", "validation", "train", "validation", 40, 6),
    ],
)
def test_load_dataset_picks_the_split_of_a_saved_dataset_dict(dataset_dict, split, eval_split, train_tag, eval_tag,
                                                              n_train, n_eval):
    data = load_dataset(DataConfig(source=str(dataset_dict), label_field="label", split=split, eval_split=eval_split,
                                   eval_size=6))
    assert (len(data.train.texts), len(data.eval.texts)) == (n_train, n_eval)
    assert all(f"review {train_tag}" in t for t in data.train.texts)
    assert all(f"review {eval_tag}" in t for t in data.eval.texts)
    check_labels(data, NAMES)


def test_load_dataset_uses_the_only_split_of_a_saved_dataset_dict(tmp_path):
    path = save_dataset_dict(tmp_path / "only-test", {"test": 10})
    data = load_dataset(DataConfig(source=str(path), eval_size=2))
    assert len(data.train.texts) == 8 and all("review test" in t for t in data.train.texts)


def test_load_dataset_reads_a_saved_dataset_from_a_package_source(tmp_path, monkeypatch):
    save_dataset(tmp_path / "pkg_with_data" / "data" / "reviews", rows(10))
    (tmp_path / "pkg_with_data" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_dataset(DataConfig(source="package:pkg_with_data/data/reviews", eval_size=2))
    assert len(data.train.texts) == 8


def corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file\n at all")
    return str(path)


def parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "p.parquet"
    pd.DataFrame({"body": ["a", "b", "c"], "label": ["x", "y", "x"]}).to_parquet(path)
    return str(path)


def csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,x\nb,y\nc,x\n")
    return str(path)


def plain_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.parquet").write_bytes(b"")
    return str(tmp_path / "folder")


@pytest.mark.parametrize(
    "make, settings, message",
    [
        (corrupt_parquet, {}, "data source '{src}': cannot read broken.parquet ("),
        (parquet, {}, "no field 'text' (have: ['body', 'label'])"),
        (parquet, {"text_field": "body", "label_field": "lab"}, "no field 'lab' (have: ['body', 'label'])"),
        (parquet, {"text_field": "body", "label_field": "label", "labels": ["0", "1"]},
         "no row has one of the labels ['0', '1'] in 'label' (seen: ['x', 'y'])"),
        ("dict", {"label_field": "sentiment"}, "no field 'sentiment' (have: ['text', 'label'])"),
        ("dict", {"split": "dev"}, "no split 'dev' in reviews (have: ['train', 'validation', 'test']); set data.split"),
        ("dict", {"eval_split": "dev"}, "split 'dev': no split 'dev' in reviews"),
        ("dataset", {"split": "train"}, "holds one Dataset, not a DatasetDict with splits; remove split and eval_split"),
        (csv, {"eval_split": "test"}, "t.csv is one table; split and eval_split apply to save_to_disk"),
        (plain_folder, {}, "a folder, but not one written by datasets' save_to_disk"),
        (lambda _: "rotten_tomatoes", {}, "no such file or folder (a Hugging Face hub dataset is written "
                                          "hf:rotten_tomatoes)"),
        (lambda _: "hf:", {}, "expected hf:<dataset name>[:<config>]"),
    ],
)
def test_load_dataset_errors_are_one_line_naming_the_source(tmp_path, dataset_dict, make, settings, message):
    if make == "dict":
        source = str(dataset_dict)
    elif make == "dataset":
        source = str(save_dataset(tmp_path / "one", rows(10)))
    else:
        source = make(tmp_path)
    with pytest.raises(SourceError) as info:
        load_dataset(DataConfig(source=source, eval_size=1, **settings))
    text = str(info.value)
    assert message.format(src=source) in text and text.startswith(f"data source {source!r}")
    assert "\n" not in text


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty cache; `datasets` reads the variables at import, so its copies are set too."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


@pytest.mark.parametrize("source", ["hf:compress-tests/no-such-dataset", "hf:compress-tests/no-such-dataset:cfg"])
def test_load_dataset_hub_name_fails_with_one_sentence_when_offline(offline_hub, source):
    with pytest.raises(SourceError) as info:
        load_dataset(DataConfig(source=source))
    text = str(info.value)
    assert text.startswith(f"data source {source!r}: could not load 'compress-tests/no-such-dataset' (split 'train') "
                           "from the Hugging Face hub (offline")
    assert "use a local path" in text and "\n" not in text


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_reads_either_variable(monkeypatch, variable):
    from compress.sources import hub_offline

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert not hub_offline()
    monkeypatch.setenv(variable, "1")
    assert hub_offline()


def test_load_dataset_hub_name_fails_with_one_sentence_without_network(monkeypatch):
    import socket

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                 "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(SourceError) as info:
        load_dataset(DataConfig(source="hf:rotten_tomatoes"))
    assert str(info.value) == (
        "data source 'hf:rotten_tomatoes': cannot reach the Hugging Face hub (huggingface.co:443: Name or service not "
        "known); use a local path (a file, or a folder written by save_to_disk), or set HF_HUB_OFFLINE=1 to read the "
        "local cache")


def test_load_dataset_hub_name_passes_name_config_and_splits(monkeypatch, tmp_path):
    # The online path without a network: load_dataset itself is replaced by a local save_to_disk DatasetDict.
    import datasets

    from compress import sources

    local = datasets.load_from_disk(str(save_dataset_dict(tmp_path / "hub", {"train": 20, "validation": 10})))
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return local[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(sources, "_hub_unreachable", lambda: None)
    data = load_dataset(DataConfig(source="hf:nyu-mll/glue:sst2", label_field="label", eval_split="validation",
                                   eval_size=4))
    assert calls == [("nyu-mll/glue", "sst2", "train"), ("nyu-mll/glue", "sst2", "validation")]
    assert (len(data.train.texts), len(data.eval.texts)) == (20, 4)
    check_labels(data, NAMES)


def test_load_dataset_without_datasets_installed_says_what_to_install(monkeypatch, tmp_path, dataset_dict):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(SourceError, match="the Python package 'datasets' is not installed"):
        load_dataset(DataConfig(source=str(dataset_dict)))


def test_resolve_local_leaves_hf_sources_to_the_hub():
    assert resolve_local("hf:rotten_tomatoes") is None
    assert resolve_local("hf:nyu-mll/glue:sst2") is None


def test_data_hash_follows_a_saved_dataset_folder(tmp_path):
    from compress.recipe import Recipe
    from compress.runner import data_hash

    path = save_dataset(tmp_path / "ds", rows(10))
    recipe = Recipe.model_validate({"version": 1, "name": "x", "task": "text-classification",
                                    "teacher": {"source": str(tmp_path), "license": "apache-2.0"},
                                    "data": {"source": str(path)}, "stages": [{"kind": "export"}]})
    before = data_hash(recipe)
    save_dataset(tmp_path / "ds2", rows(12))
    for file in (tmp_path / "ds2").iterdir():
        file.replace(path / file.name)
    assert data_hash(recipe) != before


@pytest.mark.parametrize("extra, limit, expected", [
    (["fresh one", "fresh two", "fresh one"], None, {"fresh one", "fresh two"}),  # repeats once
    (["fresh one", "fresh two", "fresh three"], 2, 2),                             # a seeded sample of the limit
    (["neg review 0", "pos review 1", "fresh one"], None, {"fresh one"}),         # train and held-out texts left out
])
def test_load_dataset_unlabeled_texts_leave_out_known_ones(tmp_path, extra, limit, expected):
    import pandas as pd

    pd.DataFrame(rows(20)).to_parquet(tmp_path / "d.parquet")
    pd.DataFrame({"body": extra}).to_csv(tmp_path / "more.csv", index=False)
    cfg = DataConfig(source=str(tmp_path / "d.parquet"), eval_size=5, label_field="label",
                     unlabeled={"source": str(tmp_path / "more.csv"), "text_field": "body", "limit": limit})

    data = load_dataset(cfg)

    got = data.unlabeled
    assert (set(got) == expected) if isinstance(expected, set) else len(got) == expected
    assert len(got) == len(set(got)) and not set(got) & {*data.train.texts, *data.eval.texts}
    assert load_dataset(cfg).unlabeled == got  # seeded: the same sample every time


def test_load_dataset_unlabeled_with_nothing_new_is_one_sentence(tmp_path):
    import pandas as pd

    pd.DataFrame(rows(20)).to_parquet(tmp_path / "d.parquet")
    cfg = DataConfig(source=str(tmp_path / "d.parquet"), eval_size=5, unlabeled={"source": str(tmp_path / "d.parquet")})

    with pytest.raises(SourceError, match="every text is already in the training or held-out rows"):
        load_dataset(cfg)
