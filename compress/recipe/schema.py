"""The recipe's schema: one pydantic model per level, the stages as a union discriminated on `kind`.

Field descriptions feed `--help`, the docs and `compress schema`. Validators here check what one recipe can
check by itself (stage names, the artifact chain, the matrix's keys and size); messages.py adds the
line numbers to their messages.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from compress.schema_base import StrictModel
from compress.stages import STAGES
from compress.tasks import TASK_NAMES

StageConfig = Annotated[
    functools.reduce(operator.or_, (spec.config for spec in STAGES.values())),  # the union of stage configs
    Field(discriminator="kind"),
]

MAX_VARIANTS = 256
UNLABELED_TASKS = ("sentence-embedding", "text-classification")  # distill reads data.unlabeled as more texts


class ModelSource(StrictModel):
    source: str = Field(
        description="Where the model comes from: a local folder, a Hugging Face hub id (online, or from the local "
        "cache offline), or package:<python package>/<subpath> for a folder shipped inside an installed package. An "
        ".onnx file, or a folder holding model.onnx (and tokenizer files), is an ONNX teacher: quantize and bench "
        "take it as it is."
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
    allow_external_links: bool = Field(
        default=False,
        description="Read files of the model folder that are symbolic links to places outside it (e.g. a "
        "tokenizer.json linked from elsewhere). Off so that a model folder cannot make compress read other files.",
    )
    output: str | None = Field(
        default=None, description="An ONNX teacher: the graph output to use, by name (a number such as 461 is "
        "taken as its name). Default: chosen by dtype and shape (float only; [batch, sequence, hidden] token "
        "states, [batch, n] an embedding or logits as the task says), names such as sentence_embedding, "
        "last_hidden_state or logits breaking ties.")
    pooling: Literal["mean", "cls", "max"] | None = Field(
        default=None, description="An ONNX teacher whose output is token states (sentence-embedding): how to pool "
        "them (default: its sentence-transformers 1_Pooling/config.json, else mean).")

    @field_validator("output", mode="before")
    @classmethod
    def _output_name(cls, value: Any) -> Any:
        # Exporters name outputs by number ("461"); YAML and --set read a bare 461 as an int.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class UnlabeledTexts(StrictModel):
    source: str = Field(description="More in-domain texts for distillation: a file or dataset as for data.source.")
    text_field: str = Field(default="text", description="Column or key holding the text.")
    limit: int | None = Field(default=None, ge=1, description="At most this many texts (a seeded sample).")


class DataConfig(StrictModel):
    source: str = Field(
        description="A .txt (one text a line), .csv, .tsv, .jsonl (optionally .gz/.bz2) or .parquet file, or a "
        "folder written by Hugging Face datasets' save_to_disk; local or package:<python package>/<subpath>. "
        "hf:<name>[:<config>] loads a Hugging Face hub dataset (online, or from the local cache with "
        "HF_HUB_OFFLINE=1). image-classification: a folder of class subfolders of images, an .npz file (images, "
        "labels) or sklearn:digits."
    )
    text_field: str = Field(default="text", description="Column or key holding the text.")
    label_field: str | None = Field(
        default=None, description="Column or key holding the label, if any. A classifier's labels are its class "
        "names (its config.json id2label; case aside) or its class ids (0, 1, ...); a label it cannot have stops "
        "the run.")
    labels: list[str] | None = Field(
        default=None, description="Keep only rows with these labels; their order gives the class ids of a head "
        "that finetune trains (default: the names of a ClassLabel label_field in id order, else every label "
        "sorted, numbers as numbers)."
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
    unlabeled: UnlabeledTexts | None = Field(
        default=None, description="sentence-embedding and text-classification: unlabelled in-domain texts that the "
        "distill stage adds to its training texts, the teacher's outputs as their targets (its labels, in effect). "
        "Texts also in the held-out or training split are left out; never used for evaluation or fine-tuning.")
    image_size: Annotated[int, Field(ge=1)] | Annotated[list[Annotated[int, Field(ge=1)]], Field(
        min_length=2, max_length=2)] | None = Field(
        default=None, description="image-classification: bring every image to this size, N or [height, width] "
        "(default: their own size, which must then be the same for all).")
    image_fit: Literal["resize", "center-crop"] = Field(
        default="resize", description="image-classification: how images reach image_size: resize stretches them, "
        "center-crop scales the shorter side to fit and crops the middle.")
    mean: float | list[float] | None = Field(
        default=None, description="image-classification: per-channel mean (one value, or one per channel, on the "
        "[0, 1] scale) subtracted from the pixels, so a factory's model need not normalise its inputs.")
    std: Annotated[float, Field(gt=0)] | list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, description="image-classification: per-channel standard deviation the pixels are divided by "
        "(after mean).")


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
    quality: Literal["cosine", "top10_agreement", "probe_accuracy", "knn_accuracy", "accuracy", "macro_f1",
                     "agreement"] | None = Field(
        default=None, description="The quality metric the recommendation and the gate judge (higher is better; "
        "default: the task's own, cosine for sentence-embedding, accuracy for classification). probe_accuracy and "
        "knn_accuracy need labelled held-out data (data.label_field).")
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


RUN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # it names a folder: runs/<name>


class Recipe(StrictModel):
    version: Literal[1] = Field(description="Recipe format version.")
    name: str = Field(
        pattern=RUN_NAME, description="Run name; the run directory is runs/<name>."
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
    executor: str | None = Field(
        default=None, pattern=r"^(local|ray(=\S+)?)$", description="Where a sweep's variants run: `local` (default, "
        "one after another on this machine), `ray` (a Ray on this machine, one task per variant) or `ray=ADDRESS` "
        "(join a Ray cluster, e.g. ray=auto or ray=ray://head:10001; the run directory must be on a path every node "
        "sees). compress run --executor overrides it.")

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
    def _check_unlabeled(self) -> Recipe:
        if self.data.unlabeled and self.task not in UNLABELED_TASKS:
            raise ValueError(f"data.unlabeled: task {self.task} does not take unlabelled texts (only "
                             f"{', '.join(UNLABELED_TASKS)})")
        return self

    @model_validator(mode="after")
    def _check_chain(self) -> Recipe:
        from compress.tasks.onnx_input import PYTORCH_ONLY, onnx_teacher

        onnx = onnx_teacher(self.teacher.source, self.teacher.revision) is not None
        available = {"onnx"} if onnx else {"hf-model"}  # the teacher: an ONNX model is an onnx bundle
        for index, stage in enumerate(self.stages):
            missing = [fmt for fmt in stage.consumes if fmt not in available]
            if missing and onnx and "hf-model" in missing:
                raise ValueError(PYTORCH_ONLY.format(index=index, kind=stage.kind))
            if missing:
                raise ValueError(
                    f"stages[{index}] ({stage.kind}) needs a {missing[0]} artifact, but no earlier stage "
                    f"makes one (available: {', '.join(sorted(available))})"
                )
            available.update(stage.produces)
            if self.task == "causal-lm" and stage.kind == "bench" and "data" in stage.seq_lens:
                raise ValueError(f"stages[{index}].seq_lens: `data` (real lengths) is not offered for task "
                                 "causal-lm, whose seq_lens are prompt lengths; give numbers of tokens")
        return self

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def stage_config(self, name: str):
        return next(stage for stage in self.stages if stage.name == name)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
