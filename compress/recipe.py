"""Recipe v1: schema, YAML loading with line numbers, `--set` overrides, chain checks.

Importing this module must stay cheap (no torch, no onnxruntime): `compress validate` and
`compress --help` depend on it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import operator
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from compress.errors import RecipeError
from compress.schema_base import StrictModel
from compress.stages import STAGES
from compress.tasks import TASK_NAMES

StageConfig = Annotated[
    functools.reduce(operator.or_, (spec.config for spec in STAGES.values())),  # the union of stage configs
    Field(discriminator="kind"),
]


class ModelSource(StrictModel):
    source: str = Field(
        description="Where the model comes from: a local folder, a Hugging Face hub id (online only), "
        "or package:<python package>/<subpath> for a folder shipped inside an installed package."
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) to pin.")
    license: str | None = Field(
        default=None, description="SPDX licence id of the model, when its model card does not say."
    )
    trust_remote_code: bool = Field(
        default=False, description="Run Python code shipped with the model. Off unless you trust its author."
    )
    allow_pickle: bool = Field(
        default=False,
        description="Load pickle-based weights (.bin, .pt, .pkl, .ckpt) when the model has no .safetensors. "
        "Off because unpickling can run code; PyTorch files are still read with weights_only=True.",
    )


class DataConfig(StrictModel):
    source: str = Field(
        description="A .txt (one text a line), .csv, .tsv, .jsonl (optionally .gz/.bz2) or .parquet file, or a "
        "folder written by Hugging Face datasets' save_to_disk; local or package:<python package>/<subpath>. "
        "hf:<name>[:<config>] loads a Hugging Face hub dataset (online, or from the local cache with "
        "HF_HUB_OFFLINE=1). image-classification: a folder of class subfolders of images, an .npz file (images, "
        "labels) or sklearn:digits."
    )
    text_field: str = Field(default="text", description="Column or key holding the text.")
    label_field: str | None = Field(default=None, description="Column or key holding the label, if any.")
    labels: list[str] | None = Field(
        default=None, description="Keep only rows with these labels; their order gives the class ids (default: "
        "the names of a ClassLabel label_field in id order, else every label sorted)."
    )
    eval_size: int = Field(default=1000, ge=1, description="Held-out rows for evaluation (fixed by `seed`).")
    split: str | None = Field(
        default=None, description="The split to train on, for a save_to_disk DatasetDict or an hf: source "
        "(default: train; a DatasetDict without one: its only split).")
    eval_split: str | None = Field(
        default=None, description="Take the eval_size evaluation rows from this split (e.g. validation) instead "
        "of holding them out of the training split.")
    train_limit: int | None = Field(default=None, ge=1, description="At most this many training rows.")
    seed: int = Field(default=0, description="Seed of the shuffle that splits train and eval.")
    max_length: int = Field(default=128, ge=8, le=4096, description="Tokens per text for training and eval.")
    image_size: Annotated[int, Field(ge=1)] | Annotated[list[Annotated[int, Field(ge=1)]], Field(
        min_length=2, max_length=2)] | None = Field(
        default=None, description="image-classification: resize the images of a folder to this size, N or "
        "[height, width] (default: their own size, which must then be the same for all).")


class Gates(StrictModel):
    max_quality_drop: float | None = Field(
        default=None, ge=0, description="Fail when the selected variant loses more quality than this."
    )
    min_speedup: float | None = Field(
        default=None, gt=0, description="Fail when the selected variant is not this many times faster."
    )


class Select(StrictModel):
    """What "best" means for the recommendation: constraints first, then the objective."""

    max_quality_drop: float | None = Field(
        default=None, ge=0, description="Largest headline-quality loss vs the teacher a variant may have "
        "(default: gates.max_quality_drop, else 0.02).")
    provider: str | None = Field(
        default=None, description="Only rows on this provider (cpu, cuda, ... or an onnxruntime provider name).")
    target: str | None = Field(default=None, description="Only rows measured on this target (see `targets`).")
    setting: str | None = Field(
        default=None, pattern=r"^b\d+/s\d+/t\d+(/[a-z0-9-]+)*$",
        description="Only rows at this bench setting, e.g. b1/s128/t1 or b1/s128/t1/opt-basic (default: the first "
        "one benched).")
    max_size_mb: float | None = Field(default=None, gt=0, description="Only variants at most this large.")
    objective: Literal["p50", "p90", "p99", "size", "cost"] = Field(
        default="p50", description="Among the variants that qualify, the one with the lowest of this wins "
        "(cost needs price_per_hour on the target).")


class Target(StrictModel):
    """A machine the bench runs on. `local` is this machine and needs no entry unless it has a price.

    Without `ssh` or `qemu` a target is this machine. With `ssh` the harness, the models and the inputs are
    copied there and run by `python`; with `qemu` an arm64 Python runs here under user-mode emulation.
    """

    price_per_hour: float | None = Field(
        default=None, ge=0, description="What an hour of this machine costs, in dollars; the report then "
        "shows $ per million inferences and the saving vs the teacher.")
    ssh: str | None = Field(
        default=None, pattern=r"^[^\s-][^\s]*$", description="A remote device: user@host (or a Host of "
        "~/.ssh/config). Key authentication only: the run never prompts.")
    port: int | None = Field(default=None, ge=1, le=65535, description="SSH port (default: ssh's, 22).")
    identity_file: str | None = Field(default=None, description="SSH private key (default: ssh's).")
    ssh_options: list[str] = Field(
        default_factory=list, description="Extra `ssh -o` options, e.g. StrictHostKeyChecking=accept-new.")
    connect_timeout: int = Field(default=15, ge=1, description="Seconds to wait for the SSH connection.")
    python: str = Field(
        default="python3", description="The Python on the device that runs the harness; it needs numpy and "
        "onnxruntime (the aarch64 wheel on ARM).")
    qemu: Literal["aarch64"] | None = Field(
        default=None, description="Run an arm64 Python under QEMU user-mode emulation on this machine "
        "(provision it with `python -m compress.targets.qemu_setup`). For correctness: rows are emulated.")
    qemu_root: str | None = Field(
        default=None, description="The folder qemu_setup provisioned (default: <venv>/qemu-aarch64, or "
        "$COMPRESS_QEMU_ROOT).")
    qemu_cpu: Literal["cortex-a72", "neoverse-n1"] = Field(
        default="cortex-a72", description="The emulated CPU. Never QEMU 7.2's default `max`: it computes int8 "
        "MatMulInteger wrong.")
    emulated: bool = Field(
        default=False, description="Timings on this target are emulated (e.g. an ssh chroot under QEMU): "
        "labelled so in every table and never compared. Implied by `qemu`.")

    @model_validator(mode="after")
    def _one_way(self) -> Target:
        if self.ssh and self.qemu:
            raise ValueError("a target is reached by ssh or by qemu, not both")
        if self.qemu and not self.emulated:
            self.emulated = True
        return self


class Provenance(StrictModel):
    acknowledge: str | None = Field(
        default=None,
        description="Why you may compress a teacher whose licence is unknown or restricts derivatives; "
        "recorded in the model card. Without it such a run stops before distillation.",
    )


class Recipe(StrictModel):
    version: Literal[1] = Field(description="Recipe format version.")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name; the run directory is runs/<name>."
    )
    task: Literal[TASK_NAMES] = Field(  # type: ignore[valid-type]
        description="What the model does; picks loaders, export inputs/outputs, metric and default loss."
    )
    teacher: ModelSource = Field(description="The model to compress.")
    data: DataConfig = Field(description="Texts for training, calibration and evaluation.")
    stages: list[StageConfig] = Field(min_length=1, description="The stages to run, in order.")
    gates: Gates = Field(default_factory=Gates, description="Pass/fail thresholds checked in the report.")
    select: Select = Field(default_factory=Select, description="Constraints and objective of the recommendation.")
    targets: dict[str, Target] = Field(
        default_factory=dict, description="Machines the bench runs on, by name (`local` is this one).")
    provenance: Provenance = Field(default_factory=Provenance, description="Lineage statements for the model card.")
    matrix: dict[str, Annotated[list[Any], Field(min_length=1)]] | None = Field(
        default=None, description="A sweep: recipe paths as in --set (e.g. stages.2.schemes) -> the values to try. "
        "Every combination is a variant, run in <run dir>/variants/<variant>; variants share the stages they "
        "have in common (computed once) and are ranked in one report.")

    @field_validator("matrix")
    @classmethod
    def _check_matrix(cls, matrix: dict | None) -> dict | None:
        if not matrix:
            return None
        for key in matrix:
            if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key) or key.split(".")[0] in ("matrix", "version"):
                raise ValueError(f"{key!r} is not a recipe path like stages.2.schemes (as for --set)")
        count = math.prod(len(v) for v in matrix.values())
        if count > MAX_VARIANTS:
            raise ValueError(f"{count} variants; a sweep has at most {MAX_VARIANTS}")
        return matrix

    @field_validator("stages")
    @classmethod
    def _name_stages(cls, stages: list) -> list:
        seen: dict[str, int] = {}
        for stage in stages:
            base = stage.name or stage.kind
            seen[base] = seen.get(base, 0) + 1
            if stage.name and seen[base] > 1:
                raise ValueError(f"stage name {base!r} is used twice")
            if not stage.name:
                stage.name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        return stages

    @model_validator(mode="after")
    def _check_chain(self) -> Recipe:
        available = {"hf-model"}  # the teacher
        for index, stage in enumerate(self.stages):
            missing = [fmt for fmt in stage.consumes if fmt not in available]
            if missing:
                raise ValueError(
                    f"stages[{index}] ({stage.kind}) needs a {missing[0]} artifact, but no earlier stage "
                    f"makes one (available: {', '.join(sorted(available))})"
                )
            available.update(stage.produces)
        return self

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def stage_config(self, name: str):
        return next(stage for stage in self.stages if stage.name == name)


MAX_VARIANTS = 256


def expand_matrix(recipe: Recipe, filename: str = "<recipe>") -> list[tuple[str, dict, Recipe]]:
    """The variants of a sweep as (name, {path: value}, recipe without a matrix), in matrix order."""
    if not recipe.matrix:
        return []
    base = recipe.model_dump(mode="json", exclude={"matrix"})
    keys = list(recipe.matrix)
    combos = [dict(zip(keys, values)) for values in itertools.product(*recipe.matrix.values())]
    names = _variant_names(combos)
    out = []
    for name, values in zip(names, combos):
        data = copy.deepcopy(base)
        for key, value in values.items():
            apply_value(data, key, copy.deepcopy(value), f"matrix {key}")
        data["name"] = f"{recipe.name}.{name}"[:200]
        try:
            out.append((name, values, Recipe.model_validate(data)))
        except ValidationError as exc:
            detail = _format_errors(exc, None, filename, set()).replace(f"{filename}:1: ", "")
            raise RecipeError(f"{filename}: matrix variant {name}: {detail}") from None
    return out


def _variant_names(combos: list[dict]) -> list[str]:
    """`layers-0-5_schemes-int8-dynamic`: the last word of each path and its value; numbered if not unique."""
    def slug(value) -> str:
        text = json.dumps(value) if not isinstance(value, str) else value
        return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.") or "x"

    names = ["_".join(f"{_last_word(k)}-{slug(v)}" for k, v in values.items())[:120] for values in combos]
    if len(set(names)) != len(names):
        names = [f"v{i + 1:02d}-{n}"[:120] for i, n in enumerate(names)]
    return names


def _last_word(key: str) -> str:
    return next((p for p in reversed(key.split(".")) if not p.isdigit()), key)


# ---------------------------------------------------------------- loading with line numbers


# Bounds that keep a hostile recipe from hanging or exhausting the loader; a real recipe is far below each.
MAX_BYTES = 1 << 20  # 1 MiB of YAML
MAX_DEPTH = 64  # nested mappings and lists
MAX_NODES = 100_000  # values after expanding aliases (a "billion laughs" expands to 10**9)
MAX_INT_DIGITS = 40  # longer integers are refused before Python parses them (slowly, or not at all)
INT64 = 2**63 - 1


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every failure is a RecipeError naming file:line: key."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)  # bounded: /dev/zero or a huge file must not hang us
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"{path}:1: larger than {MAX_BYTES // 1024} KiB; a recipe is a small YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_recipe(text, str(path), overrides or [])


def parse_recipe(text: str, filename: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    try:
        return _parse(text, filename, overrides or [])
    except RecursionError:  # the guards below should make this unreachable; a traceback would be worse
        raise RecipeError(f"{filename}:1: nested too deeply to read") from None


def _parse(text: str, filename: str, overrides: list[str]) -> Recipe:
    root = _compose(text, filename)
    data = _construct(root, filename)
    if not isinstance(data, dict):
        raise RecipeError(f"{filename}:1: the recipe must be a mapping of keys (version, name, task, ...)")
    overridden = set()
    for item in overrides:
        overridden.add(apply_override(data, item))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, root, filename, overridden)) from None
    _check_numbers(recipe, root, filename, overridden)
    expand_matrix(recipe, filename)  # every variant must be a valid recipe before anything runs
    return recipe


def _compose(text: str, filename: str) -> yaml.Node | None:
    try:
        _check_depth(text, filename)  # before compose: PyYAML's composer recurses once per level
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RecipeError(f"{filename}:{line}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:  # a control character or a stray byte: no mark, only a position
        line = text[: exc.position].count("\n") + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise RecipeError(f"{filename}:{line}: character {char} is not allowed in YAML") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{filename}:1: YAML error: {exc}") from None
    if root is not None:
        _check_size(root, filename)
        _check_duplicates(root, filename, set())
    return root


def _check_depth(text: str, filename: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # iterative: safe at any depth
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"{filename}:{event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_size(root: yaml.Node, filename: str) -> None:
    """Refuse alias bombs: count values as if every alias were expanded (memoized, so linear)."""
    sizes: dict[int, int] = {}
    # Children before parents, without recursion: a node's size needs its children's sizes.
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        if id(node) in sizes:
            continue
        sizes[id(node)] = 0
        order.append(node)
        if isinstance(node, yaml.ScalarNode):
            _check_scalar(node, filename)
        stack.extend(_children(node))
    for node in reversed(order):
        sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
    if sizes[id(root)] > MAX_NODES:
        raise RecipeError(f"{filename}:1: more than {MAX_NODES:,} values once aliases are expanded "
                          "(an alias bomb?); write the recipe out without nested aliases")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_scalar(node: yaml.ScalarNode, filename: str) -> None:
    if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_DIGITS:
        raise RecipeError(f"{filename}:{node.start_mark.line + 1}: a {len(node.value)}-digit number is too large")


class _Constructor(yaml.SafeLoader):
    """SafeLoader whose scalar constructors fail with the node's line: `!!timestamp 1` or `!!float x` raise
    AttributeError or ValueError inside PyYAML, without a mark."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            tag = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.value!r:.60} as {tag} ({exc})", node.start_mark) from None


def _construct(root: yaml.Node | None, filename: str) -> Any:
    if root is None:
        return None
    try:
        return _Constructor("").construct_document(root)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise RecipeError(f"{filename}:{line}: {exc.problem}") from None


def _check_numbers(recipe: Recipe, root: yaml.Node | None, filename: str, overridden: set) -> None:
    """inf, nan (also from strings like "1e400") and integers beyond int64 pass pydantic's checks but would
    hang a loop or overflow a C library later: refuse them here, with their line."""
    bad = []
    stack: list[tuple[tuple, Any]] = [((), recipe.model_dump(mode="python"))]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((loc + (k,), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((loc + (i,), v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append((loc, f"{value!r} is not a finite number"))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
            bad.append((loc, "the number is too large (more than 2**63 - 1)"))
    lines = []
    for loc, message in sorted(bad, key=str):
        path, line = _locate(root, loc)
        where = "--set" if any(loc[: len(o)] == o[: len(loc)] for o in overridden) else f"{filename}:{line}"
        lines.append(f"{where}: {_key_path(loc)}: {message}")
    if lines:
        raise RecipeError("\n".join(lines))


def _check_duplicates(node: yaml.Node, filename: str, visited: set) -> None:
    if id(node) in visited:  # an alias: already checked (and re-walking it is how alias bombs hang)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise RecipeError(f"{filename}:{key.start_mark.line + 1}: key {key.value!r} appears twice")
                seen.add(key.value)
            _check_duplicates(value, filename, visited)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, filename, visited)


def apply_override(data: dict, item: str) -> tuple:
    """Apply `a.b.0.c=value` (value parsed as YAML) to `data`; return the key path."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. stages.0.epochs=2")
    try:
        value = _construct(_compose(raw, "--set"), "--set")
    except RecipeError as exc:
        if "YAML syntax error" not in str(exc) and "is not allowed in YAML" not in str(exc):
            # too deep, too large, an unknown tag: refused as in a file
            raise RecipeError(str(exc).replace("--set:1:", f"--set {key}:", 1)) from None
        value = raw  # not YAML: taken as the string it is
    return apply_value(data, key, value, item)


def apply_value(data: dict, key: str, value: Any, item: str) -> tuple:
    """Set `a.b.0.c` in `data` to `value`; `item` names the setting in errors."""
    parts = key.split(".")
    target: Any = data
    for depth, part in enumerate(parts[:-1]):
        target = _step(target, part, parts[: depth + 1], item, create=True)
    last = parts[-1]
    if isinstance(target, list):
        _step(target, last, parts, item, create=False)
        target[int(last)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise RecipeError(f"--set {item!r}: {'.'.join(parts[:-1])} is not a mapping or list")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _step(target: Any, part: str, path: list[str], item: str, create: bool) -> Any:
    if isinstance(target, list):
        if not part.isdigit() or int(part) >= len(target):
            raise RecipeError(f"--set {item!r}: {'.'.join(path)} is not an index of a {len(target)}-item list")
        return target[int(part)]
    if isinstance(target, dict):
        if part not in target and create:
            target[part] = {}
        return target[part]
    raise RecipeError(f"--set {item!r}: {'.'.join(path[:-1])} is not a mapping or list")


def _format_errors(exc: ValidationError, root: yaml.Node | None, filename: str, overridden: set) -> str:
    lines = []
    for error in exc.errors():
        loc, line = _locate(root, error["loc"])
        overrode = any(loc[: len(o)] == o[: len(loc)] for o in overridden)
        where = "--set" if overrode else f"{filename}:{line}"
        key = _key_path(loc)
        lines.append(_shorten(f"{where}: {key + ': ' if key else ''}{_message(error, loc)}"))
    lines = list(dict.fromkeys(lines))
    if len(lines) > MAX_ERRORS:  # a generated or hostile recipe can have thousands
        lines = lines[:MAX_ERRORS] + [f"... and {len(lines) - MAX_ERRORS} more errors"]
    return "\n".join(lines)


MAX_ERRORS = 20


def _shorten(line: str, limit: int = 300) -> str:
    # One error, one line: a key may hold a newline or a control character.
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _locate(root: yaml.Node | None, loc: tuple) -> tuple[tuple, int]:
    """Walk the YAML tree along a pydantic error location; skip the union tags pydantic inserts."""
    node, path, line = root, [], (root.start_mark.line + 1 if root else 1)
    for part in loc:
        child = _child(node, part)
        if child is None:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str) and _is_tag(node, part):
                continue
            path.append(part)
            break
        key_node, node = child
        path.append(part)
        line = (key_node or node).start_mark.line + 1
    return tuple(path), line


def _child(node: yaml.Node | None, part: Any):
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None


def _is_tag(node: yaml.MappingNode, part: str) -> bool:
    return any(k.value == "kind" and getattr(v, "value", None) == part for k, v in node.value)


def _key_path(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error: dict, loc: tuple) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    value = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(error["loc"][:-1])
        allowed = f" (allowed: {', '.join(parent.model_fields)})" if parent else ""
        return f"unknown key {loc[-1]!r}{allowed}"
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx.get('expected')}"
    if kind == "union_tag_invalid":
        return f"unknown stage kind {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return f"missing 'kind' (one of {', '.join(STAGES)})"
    if kind == "missing":
        return "required key is missing"
    return error["msg"][0].lower() + error["msg"][1:] if error["msg"] else kind


def _model_at(loc: tuple):
    """The pydantic model class at a key path of the recipe, to list its allowed keys."""
    model, items = Recipe, list(loc)
    while items:
        part = items.pop(0)
        if isinstance(part, int):
            continue
        if model is Recipe and part == "stages":
            if len(items) >= 2 and isinstance(items[0], int) and items[1] in STAGES:
                model = STAGES[items[1]].config
                items = items[2:]
                continue
            return None
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, StrictModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
