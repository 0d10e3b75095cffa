"""Licence policy for teachers: a small table of common model licences and the go / stop decision.

Distilling trains a new model on a teacher's outputs and ships a derivative of it, so two rights
matter: making derivatives, and using the model (or its outputs) to train other models. A licence
that forbids either, or a licence we cannot name, stops the run before distillation unless the
recipe says why it is fine anyway (`provenance: {acknowledge: "<reason>"}`); the reason is recorded
in the model card. The table is a summary to catch mistakes early, not legal advice.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compress.errors import CompressError

CARD_FILES = ("README.md", "readme.md", "MODEL_CARD.md")
ACKNOWLEDGE_HINT = 'provenance: {acknowledge: "<why you may do this>"}'


class LicenseError(CompressError):
    """The teacher's licence does not allow this run and the recipe does not acknowledge it."""


@dataclass(frozen=True)
class License:
    """What a licence allows. None means "not clear from the licence": treated as not allowed."""

    id: str  # the Hugging Face / SPDX id, lower case
    name: str
    derivatives: bool | None  # may you make and share modified models (a student, a quantized copy)?
    commercial: bool | None  # may the model and its derivatives be used commercially?
    train_other_models: bool | None  # may the model or its outputs train another model?
    conditions: str = ""  # what a derivative must carry on

    def to_json(self) -> dict:
        return asdict(self)


_PERMISSIVE = "keep the licence and copyright notice"
LICENSES: dict[str, License] = {lic.id: lic for lic in (
    License("apache-2.0", "Apache License 2.0", True, True, True,
            _PERMISSIVE + "; state the changes you made"),
    License("mit", "MIT License", True, True, True, _PERMISSIVE),
    License("bsd-3-clause", "BSD 3-Clause License", True, True, True,
            _PERMISSIVE + "; no endorsement claims"),
    License("bsd-2-clause", "BSD 2-Clause License", True, True, True, _PERMISSIVE),
    License("cc0-1.0", "Creative Commons Zero 1.0", True, True, True, ""),
    License("cc-by-4.0", "Creative Commons Attribution 4.0", True, True, True,
            "credit the author, link the licence"),
    License("cc-by-sa-4.0", "Creative Commons Attribution-ShareAlike 4.0", True, True, True,
            "credit the author; derivatives under the same licence"),
    License("cc-by-nc-4.0", "Creative Commons Attribution-NonCommercial 4.0", True, False, True,
            "credit the author; non-commercial use only, derivatives included"),
    License("cc-by-nc-sa-4.0", "Creative Commons Attribution-NonCommercial-ShareAlike 4.0", True, False, True,
            "credit the author; non-commercial use only; derivatives under the same licence"),
    License("cc-by-nd-4.0", "Creative Commons Attribution-NoDerivatives 4.0", False, True, None,
            "no adapted material may be shared"),
    License("cc-by-nc-nd-4.0", "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0",
            False, False, None,
            "no adapted material may be shared; non-commercial use only"),
    License("llama2", "Llama 2 Community License", True, True, False,
            "include the licence and 'Llama 2 is licensed under the LLAMA 2 Community License'; "
            "acceptable use policy; a separate licence above 700M monthly users; its outputs may not "
            "improve any other large language model (except Llama 2 derivatives)"),
    License("llama3", "Meta Llama 3 Community License", True, True, False,
            "'Built with Meta Llama 3' and a name starting with 'Llama 3'; acceptable use policy; a separate "
            "licence above 700M monthly users; its outputs may not improve any other large language model "
            "(except Llama 3 derivatives)"),
    *(License(f"llama3.{minor}", f"Llama 3.{minor} Community License", True, True, True,
              "'Built with Llama' and a model name starting with 'Llama'; acceptable use policy; a separate "
              "licence above 700M monthly users" + extra)
      for minor, extra in (("1", ""), ("2", "; multimodal models not licensed to EU-domiciled users"),
                           ("3", ""))),
    License("gemma", "Gemma Terms of Use", True, True, True,
            "models trained on Gemma outputs (distillation) are Model Derivatives: pass on the Gemma "
            "terms and the prohibited use policy"),
    *(License(lid, name, True, True, True,
              "pass on the use-based restrictions (Attachment A) to every derivative and user")
      for lid, name in (("openrail", "Open RAIL"), ("openrail++", "Open RAIL++-M"),
                        ("bigscience-openrail-m", "BigScience Open RAIL-M"),
                        ("creativeml-openrail-m", "CreativeML Open RAIL-M"),
                        ("bigcode-openrail-m", "BigCode Open RAIL-M"),
                        ("bigscience-bloom-rail-1.0", "BigScience BLOOM RAIL 1.0"))),
    License("unknown", "unknown licence", None, None, None, "find the licence before distributing anything"),
)}

ALIASES = {
    "apache 2.0": "apache-2.0", "apache2": "apache-2.0", "apache-2": "apache-2.0",
    "apache license 2.0": "apache-2.0", "bsd-3": "bsd-3-clause", "cc-by": "cc-by-4.0", "cc-by-nc": "cc-by-nc-4.0",
    "cc-by-nd": "cc-by-nd-4.0", "llama-2": "llama2", "llama 2": "llama2", "llama-3": "llama3", "llama 3": "llama3",
    "llama-3.1": "llama3.1", "llama-3.2": "llama3.2", "llama-3.3": "llama3.3", "gemma-terms-of-use": "gemma",
    "openrail-m": "openrail",
    "other": "unknown", "": "unknown", "none": "unknown", "proprietary": "unknown",
}

# Phrases in a model card that restrict more than its licence id says (e.g. `license: other` with the
# Llama 2/3 clause pasted in). They can only make the decision stricter.
CLAUSES = (
    (re.compile(r"improve any other large language model", re.IGNORECASE), "train_other_models",
     "the model card forbids using the model or its outputs to improve other models"),
    (re.compile(r"no\s*derivatives|may not (?:modify|create derivative)", re.IGNORECASE), "derivatives",
     "the model card forbids derivatives"),
)


@dataclass(frozen=True)
class Decision:
    """The licence found for a teacher and whether the run may go on."""

    license: str  # canonical id; "unknown" when nothing named a licence we know
    declared: str | None  # the id as written (card or recipe)
    source: str  # "model card", "recipe" or "none"
    allowed: bool
    reasons: list[str] = field(default_factory=list)  # what would stop the run
    conditions: str = ""  # what a derivative must carry on
    acknowledged: str | None = None  # the recipe's reason for going on anyway
    message: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def lookup(license_id: str | None) -> License:
    """The table entry of an id (case and common spellings forgiven); unknown ids get "unknown"."""
    key = (license_id or "").strip().lower()
    key = ALIASES.get(key, key)
    return LICENSES.get(key) or LICENSES["unknown"]


def read_front_matter(text: str) -> dict:
    """The YAML front matter of a model card ("---" ... "---" at the top), or {}."""
    import yaml

    match = re.match(r"\A\ufeff?---\s*\n(.*?)\n---\s*(?:\n|\Z)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def read_model_card(folder: str | Path) -> str | None:
    for name in CARD_FILES:
        path = Path(folder) / name
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
    return None


def license_from_card(text: str | None) -> str | None:
    """`license:` of a card's front matter; with `license: other`, its `license_name` when present."""
    meta = read_front_matter(text or "")
    value = meta.get("license")
    if isinstance(value, list):
        value = value[0] if value else None
    name = meta.get("license_name")
    if isinstance(value, str) and value.strip().lower() == "other" and isinstance(name, str):
        value = name
    return value.strip() if isinstance(value, str) and value.strip() else None


def read_from_model_card(folder: str | Path) -> str | None:
    """The licence id a model folder's card (README.md front matter) declares, or None."""
    return license_from_card(read_model_card(folder))


def check(license_id: str | None, model_card_text: str | None = None, acknowledge: str | None = None,
          *, training: bool = True) -> Decision:
    """Decide whether a teacher may be distilled (training=True) or only converted (training=False).

    The model card's licence wins over the recipe's `license_id` (which is for cards that say nothing);
    a card saying only "other" or "unknown" does not override a licence the recipe names.
    """
    from_card = license_from_card(model_card_text)
    if from_card and lookup(from_card).id != "unknown":
        declared, source = from_card, "model card"
    elif license_id:
        declared, source = license_id, "recipe"
    else:
        declared, source = from_card, "model card" if from_card else "none"
    entry = lookup(declared)
    found = {}  # right -> why the run stops
    for pattern, right, reason in CLAUSES:
        if model_card_text and pattern.search(model_card_text):
            found[right] = reason
    if entry.derivatives is False:
        found.setdefault("derivatives", f"{entry.name} forbids derivatives, and a distilled or quantized "
                         "model is one")
    if entry.train_other_models is False:
        found.setdefault("train_other_models", f"{entry.name} forbids using the model or its outputs to "
                         "train other models")
    if not training:  # converting only: the training clause does not apply
        found.pop("train_other_models", None)
    reasons = list(found.values())
    if entry.id == "unknown":
        reasons.insert(0, f"the licence {declared!r} is not one we know" if declared
                       else "no licence is declared")
    acknowledged = (acknowledge or "").strip() or None
    allowed = not reasons or acknowledged is not None
    decision = Decision(license=entry.id, declared=declared, source=source, allowed=allowed, reasons=reasons,
                        conditions=entry.conditions, acknowledged=acknowledged if reasons else None)
    return Decision(**{**asdict(decision), "message": _message(decision)})


def check_teacher(folder: str | Path | None, declared: str | None, acknowledge: str | None = None,
                  *, training: bool = True) -> Decision:
    """`check` with the card read from the teacher's folder (when it is a local folder with a card)."""
    text = read_model_card(folder) if folder is not None and Path(folder).is_dir() else None
    return check(declared, text, acknowledge, training=training)


def require(decision: Decision) -> Decision:
    """Raise LicenseError with the decision's message when the run may not go on."""
    if not decision.allowed:
        raise LicenseError(decision.message)
    return decision


def _message(d: Decision) -> str:
    where = (f"{d.declared!r} from the {d.source}" if d.declared
             else "no licence in the model card or the recipe")
    if not d.reasons:
        return f"teacher licence {d.license} ({where}): allowed" + (f"; conditions: {d.conditions}"
                                                                       if d.conditions else "")
    why = "; ".join(d.reasons)
    if d.acknowledged:
        return f"teacher licence {d.license} ({where}): {why}; going on because the recipe acknowledges: " \
               f"{d.acknowledged!r}"
    fix = ("declare the licence in the recipe (teacher: {license: <id>}) if the model card does not say, or "
           if d.license == "unknown" else "")
    return (f"teacher licence {d.license} ({where}): {why}. The run stopped before distillation. To go on, "
            f"{fix}make sure you have the right to (your own model, written permission) and say why in the "
            f"recipe: {ACKNOWLEDGE_HINT}; the reason is recorded in the model card.")


def table_markdown() -> str:
    """The licence table as Markdown (docs and `compress` help)."""
    def yes(value):
        return {True: "yes", False: "**no**", None: "unclear"}[value]

    lines = ["| licence | derivatives | commercial use | training other models | conditions |",
             "|---|---|---|---|---|"]
    lines += [f"| {lic.id} | {yes(lic.derivatives)} | {yes(lic.commercial)} | "
              f"{yes(lic.train_other_models)} | {lic.conditions or '-'} |" for lic in LICENSES.values()]
    return "\n".join(lines)
