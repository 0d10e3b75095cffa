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
    """The `teacher` artifact of `recipe` in `run_dir`, with its provenance in the metadata: an hf-model, or an
    onnx bundle (`teacher.onnx`) when the source is an ONNX model."""
    from compress.tasks import causal_lm, onnx_input
    from compress.tasks.factory import resolve as resolve_source

    teacher = recipe.teacher
    onnx_source = onnx_input.onnx_teacher(teacher.source, teacher.revision)
    if onnx_source is not None:
        return _onnx_teacher(recipe, run_dir, onnx_source)
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


def _onnx_teacher(recipe, run_dir: Path, source: Path) -> Artifact:
    """The ONNX model as an fp32 bundle in artifacts/teacher.onnx, rebuilt only when the source or the settings
    changed (compress.json records both)."""
    import hashlib
    import json

    from compress.artifacts import atomic_path
    from compress.tasks import onnx_input
    from compress.tasks.common import read_json

    teacher = recipe.teacher
    output, pooling = getattr(teacher, "output", None), getattr(teacher, "pooling", None)
    model = onnx_input.find_model(source)
    files = sorted(p for p in model.parent.iterdir() if p.is_file()) if source.is_dir() else [model]
    digest = hashlib.sha256(json.dumps([recipe.task, output, pooling, recipe.data.max_length]).encode())
    for file in files:
        digest.update(file.name.encode() + bytes.fromhex(sha256_path(file)))
    final = run_dir / "artifacts" / "teacher.onnx"
    info = read_json(final / "compress.json")
    if info.get("source_sha256") != digest.hexdigest():
        with atomic_path(final) as tmp:
            info = onnx_input.write_bundle(source, tmp, recipe.task, output, pooling, recipe.data.max_length)
            info["source_sha256"] = digest.hexdigest()
            (tmp / "compress.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    meta = {"role": "teacher", "precision": "fp32", "source": teacher.source, "input": "onnx",
            "revision": teacher.revision, "license": teacher.license, "remote_code": [], "trust_remote_code": False,
            "weights": "onnx", "onnx_input": info.get("onnx_input"), "fixed_axes": info.get("fixed_axes", {})}
    return Artifact(name="teacher.onnx", path=final, format="onnx", sha256=sha256_path(final), metadata=meta)
