"""The teacher artifact, resolved once from the recipe: the one place that turns `teacher.source` into a model.

A python: factory is built into artifacts/teacher, a GGUF file is converted there once; other sources are used
where they are. The runner and the distributed worker both call `resolve`; stages ask `ctx.teacher()` for the
latest teacher (the fine-tuned one when a finetune stage ran).
"""

from __future__ import annotations

from pathlib import Path

from compress.artifacts import Artifact, sha256_path
from compress.sources import check_model_folder, resolve_local


def resolve(recipe, run_dir: Path) -> Artifact:
    """The `teacher` artifact of `recipe` in `run_dir`, with its provenance in the metadata."""
    from compress.tasks import causal_lm
    from compress.tasks.factory import resolve as resolve_source

    teacher = recipe.teacher
    local = resolve_local(teacher.source) if not teacher.source.startswith("python:") else None
    if local is not None and causal_lm.is_gguf(local):
        path = causal_lm.convert_gguf(local, run_dir / "artifacts" / "teacher")
    else:
        path = resolve_source(teacher.source, run_dir / "artifacts" / "teacher", teacher.trust_remote_code,
                              teacher.revision)
    # Before any stage loads it: pickle-only weights and links out of the folder are refused unless the recipe
    # allows them; a damaged or incomplete folder is one sentence here instead of a traceback in a stage.
    checked = check_model_folder(path, teacher.trust_remote_code, teacher.allow_pickle,
                                 allow_external_links=teacher.allow_external_links,
                                 needs_tokenizer=recipe.task != "image-classification")
    meta = {"role": "teacher", "source": teacher.source, "revision": teacher.revision,
            "license": teacher.license, **checked}
    return Artifact(name="teacher", path=path, format="hf-model", sha256=sha256_path(path), metadata=meta)
