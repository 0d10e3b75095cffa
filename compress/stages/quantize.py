"""Stage quantize: one ONNX bundle per fp32 ONNX bundle and scheme, with onnxruntime.quantization.

Works on the fused graph (export optimize: true) and on the plain one. int8-portable, int8-static and int4-weight
(and int8-dynamic in its "matmul-integer" form, where that is the faster on the CPU: compress/int8_form.py)
first rewrite the fused Attention and EmbedLayerNormalization as standard operators (compress/unfuse.py), so that
the embedding table and the packed QKV weights are quantized too and no onnxruntime-only operator is made.
Measured on all-MiniLM-L6-v2 (fused, AVX2 EPYC, cosine to fp32 ONNX on 200 held-out reviews, 128 tokens):
int8-dynamic 22.8 MB, 0.992 (QAttention/QEmbedLayerNormalization: onnxruntime only); int8-portable 23.5 MB, 0.992
(standard operators; OpenVINO loads it); int8-static 34.1 MB (was 67), 0.989, larger than int8-dynamic because
the MatMuls after GELU stay in float (0.922 otherwise); int4-weight 16.2 MB (was 58), 0.973 (QKV in 8 bits: all
4-bit is 14.9 MB at 0.960); fp16 1.000 at 50%. Each bundle's compress.json says which runtimes load it.
int4-weight: stages/quantize_int4.py; the int8 schemes: stages/quantize_int8.py.
"""

from __future__ import annotations

import functools
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema

from compress import quant_check, quant_mixed, quant_tools, sensitivity
from compress.errors import StageError
from compress.schema_base import StageBase, StrictModel
from compress.stages import quantize_int8
from compress.stages.quantize_int4 import Int4Options

Scheme = Literal["int8-dynamic", "int8-portable", "int8-static", "int4-weight", "fp16"]


class Int8Options(StrictModel):
    per_channel: bool = Field(
        default=True, description="Per-channel weight scales (about 3 points of cosine better than per-tensor here)."
    )
    weight_type: Literal["auto", "int8", "uint8"] = Field(
        default="auto", description="Weight integer type; auto picks from the CPU's features (AVX2, AVX-512 VNNI, ARM)."
    )
    reduce_range: bool | None = Field(
        default=None, description="7-bit weights, against saturation on x86 without VNNI (default: from the CPU)."
    )
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="int8-static: how activation ranges are found."
    )
    calibration_size: int = Field(default=128, ge=1, description="int8-static: texts used to calibrate.")
    calibration_search: list[Literal["minmax", "entropy", "percentile"]] | None = Field(
        default=None, description="int8-static of a conv-dominated model: the calibration methods tried, each with "
        "per-channel weights on and off, scored by agreement with fp32 on the calibration images (not the held-out "
        "ones); the best is kept and reported (default: all three; []: calibration and per_channel as given).")
    equalize: bool | None = Field(
        default=None, description="int8-static of a conv-dominated model: cross-layer equalization of consecutive "
        "convolutions first (exact in fp32; evens out depthwise channels' ranges). Default: yes.")
    mixed: quant_mixed.MixedOptions = Field(default_factory=quant_mixed.MixedOptions, description="int8-static of a "
        "conv-dominated model: the tensors whose int8 costs the most agreement kept in float (compress/quant_mixed.py).")
    op_types: list[str] | None = Field(
        default=None, description="Operator types to quantize (default: the scheme's safe set, e.g. MatMul)."
    )
    keep_float: list[str] | None = Field(
        default=None, description="int8-dynamic: regular expressions of MatMul names kept in fp32. Default: the "
        "architecture's measured outliers (compress/quant_rules.py; all-mpnet-base-v2: every FFN output and the "
        "upper half's FFN inputs, cosine 0.867 -> 0.9925); [] quantizes every node.")
    form: Literal["auto", "measure", "fused", "matmul-integer"] = Field(
        default="auto", description="int8-dynamic's graph form (compress/int8_form.py): fused (QAttention, "
        "QEmbedLayerNormalization: onnxruntime only) or matmul-integer (int8-portable's standard operators, s8 "
        "MatMulInteger: 1.26x faster at b1, 1.09x at b32 on x86 with VNNI for all-MiniLM-L6-v2). auto: from the CPU's features; "
        "measure: both timed briefly at the recipe's bench setting, the faster kept.")
    form_time_budget: float = Field(
        default=60.0, gt=0, description="int8.form: measure: seconds for the timing (at least 3 rounds are run).")
    skip_after_gelu: bool = Field(
        default=True, description="int8-static: keep MatMuls fed by GELU in float (their activation outliers "
        "cost MiniLM 7 points of cosine)."
    )


def _seconds(value):
    """90, "90s", "10m", "1h", "1m30s" -> seconds."""
    if isinstance(value, str):
        text = value.strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?", text)
        if not text or parts is None:
            raise ValueError(f"{value!r} is not a duration (write 90, 90s, 10m or 1h)")
        hours, minutes, seconds = (float(g or 0) for g in parts.groups())
        return hours * 3600 + minutes * 60 + seconds
    return value


Duration = Annotated[float, BeforeValidator(_seconds), WithJsonSchema(
    {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\d+(\.\d+)?(h|m|s)?$"}]})]


class AccuracyOptions(StrictModel):
    """Accuracy-aware quantization: keep the most sensitive nodes in higher precision until the drop fits."""

    max_quality_drop: float = Field(
        ge=0, description="Largest loss of the task's headline metric (vs the teacher's fp32 outputs) that "
        "quantization may cost, measured against the fp32 source model.")
    time_budget: Duration = Field(
        default=600.0, gt=0, description="Time for the search of each model and scheme: seconds, or 90s, "
        "10m, 1h. When it is spent the best model found so far is kept.")
    granularity: Literal["layer", "node"] = Field(
        default="layer", description="What is ranked and kept out: a layer's quantizable nodes together "
        "(cheap: one evaluation per layer), or each node alone.")
    eval_size: int = Field(
        default=200, ge=1, description="Held-out texts scored at each step (at most data.eval_size).")


class Config(StageBase):
    consumes = ("onnx",)
    produces = ("onnx",)

    kind: Literal["quantize"] = "quantize"
    schemes: list[Scheme] | None = Field(
        default=None, min_length=1, description="One artifact per scheme and model (default: int8-dynamic; "
        "int8-static for image-classification, whose convolutions run about 5-11x slower than fp32 as "
        "int8-dynamic's ConvInteger). int8-portable: int8-dynamic's size and quality in standard ONNX "
        "operators only, for OpenVINO and other runtimes (int8-dynamic's fused QAttention is onnxruntime's own).")
    check_size: int = Field(
        default=128, ge=0, description="Held-out examples on which every artifact is compared with its fp32 "
        "source (agreement for logits, cosine otherwise) after onnx.checker and a session load; 0: no comparison.")
    models: list[str] | None = Field(
        default=None, description="Names of the fp32 ONNX artifacts to quantize (default: all of them)."
    )
    int8: Int8Options = Field(default_factory=Int8Options, description="Options of the int8 schemes.")
    int4: Int4Options = Field(default_factory=Int4Options, description="Options of int4-weight.")
    accuracy: AccuracyOptions | None = Field(
        default=None, description="A quality budget: when a scheme loses more, its most sensitive nodes are "
        "kept in higher precision (int8: fp32; int4-weight: 8-bit) step by step, within a time budget. "
        "fp16 is not searched.")


def run(cfg: Config, ctx) -> list:
    from compress.progress import track

    sources = _sources(cfg, ctx)
    total = len(sources) * len(cfg.schemes or [None])  # no schemes given: one default per source
    with track(ctx.console, ctx.stage_name, total, unit="variant") as progress:
        return _run(cfg, ctx, sources, progress)


def _run(cfg: Config, ctx, sources: list, progress) -> list:
    """Every scheme of every source; `progress` hears of each (calibration and the accuracy search take minutes)."""
    from compress.tasks.common import read_json

    out = []
    for source in sources:
        feeds = quant_check.held_out_feeds(ctx, source, cfg.check_size) if cfg.check_size else []
        form = None
        for scheme in _schemes(cfg, ctx, source):
            name = f"{source.name.removesuffix('.onnx')}.{scheme}.onnx"
            progress.update(text=f"{name} ({'accuracy search' if cfg.accuracy is not None else scheme})")
            options: dict = {"feeds": feeds}
            if scheme == "int8-dynamic":
                form = form or _int8_form(cfg, ctx, source, feeds)
                options.update(form=form[0], form_why=form[1])
            start = time.perf_counter()
            accuracy = None
            if cfg.accuracy is not None and scheme in sensitivity.SCHEME_OPS:
                artifact, accuracy, tables = _tune(cfg, ctx, source, scheme, name, options)
                out.append(tables)
            else:
                artifact = ctx.save(name, "onnx", functools.partial(_bundle, cfg, ctx, source, scheme,
                                                                      options=options))
            size, seconds = _size(artifact.path), round(time.perf_counter() - start, 2)
            options.pop("feeds", None)
            check, log = options.pop("check", {}), options.pop("log", {})
            ctx.metrics[name] = {"source": source.name, "scheme": scheme, "options": options, "size_bytes": size,
                                 "size_ratio": round(size / _size(source.path), 4), "seconds": seconds}
            extra = {}
            if accuracy is not None:
                ctx.metrics[name]["accuracy"] = accuracy
                extra = {"excluded_nodes": accuracy["excluded_nodes"], "kept_precision": accuracy["kept_precision"],
                         "accuracy": {k: accuracy[k] for k in ("quality", "drop", "within_budget", "reason")}}
            runtimes = read_json(artifact.path / "compress.json").get("runtimes") or {}
            out.append(replace(artifact, metadata={
                "source": source.name, "role": source.metadata.get("role", source.name), "precision": scheme,
                "scheme_options": options, "size_bytes": size, "check": check, "runtimes": runtimes, **extra,
            }))
            ctx.metrics[name]["check"] = check
            ctx.console.print(quant_check.summary_line(
                f"quantized {source.name} -> {name}", size, ctx.metrics[name]["size_ratio"], check,
                log.get("lines", 0), log.get("log"), ctx.run_dir))
            progress.advance(1)
    return out


def _tune(cfg: Config, ctx, source, scheme: str, name: str, options: dict) -> tuple:
    """The accuracy search (compress/sensitivity.py): the best bundle under `name`, its summary, the tables."""
    acc = cfg.accuracy
    evaluator = sensitivity.Evaluator(ctx, source, acc.eval_size)
    skip = quantize_int8.after_gelu(quantize_int8.with_shapes(source.path / "model.onnx")) if (
        scheme == "int8-static" and cfg.int8.skip_after_gelu) else []
    op_types = cfg.int8.op_types if scheme.startswith("int8") else None
    if scheme == "int8-static":
        op_types = quantize_int8.static_op_types(cfg.int8, ctx.task)
    nodes = sensitivity.candidates(source.path / "model.onnx", scheme, op_types, skip)
    groups = sensitivity.group_nodes(nodes, acc.granularity)
    search = sensitivity.Search(name, scheme, acc.max_quality_drop, acc.time_budget, ctx.work_dir)

    off = cfg.int8.model_copy(update={"mixed": quant_mixed.MixedOptions(target=0)})  # this search keeps in float

    def build(folder: Path, exclude=None, only=None) -> None:
        _bundle(cfg.model_copy(update={"int8": off}), ctx, source, scheme, folder, options, exclude=exclude, only=only)

    def save(folder: Path, step: dict) -> None:
        from compress.tasks.common import read_json, write_json

        options.update(check=read_json(folder / "compress.json").get("check", {}))
        def write(tmp: Path) -> None:
            shutil.copytree(folder, tmp)
            info = read_json(tmp / "compress.json")
            write_json(tmp / "compress.json", {**info, "excluded_nodes": step["excluded_nodes"],
                                               "kept_precision": sensitivity.KEPT_PRECISION[scheme],
                                               "accuracy_step": step["step"], "quality_drop": step["drop"]})
        ctx.save(name, "onnx", write)
        ctx.console.print(f"  {name}: step {step['step']} ({len(step['excluded_nodes'])} node(s) kept out) "
                          f"drop {step['drop']} -> saved as the best so far")

    state = search.run(build, evaluator, source.path, groups, save)
    artifact = _saved(ctx, name)
    tables = ctx.save(f"{name.removesuffix('.onnx')}.accuracy", "accuracy",
                      lambda tmp: sensitivity.write_tables(tmp, state), {"artifact": name})
    summary = sensitivity.summary(state)
    ctx.console.print(f"  accuracy search of {name}: {summary['reason']}; drop {summary['drop']} "
                      f"(budget {acc.max_quality_drop:g}), {len(summary['excluded_nodes'])} node(s) kept in "
                      f"{summary['kept_precision']}")
    return artifact, summary, tables


def _schemes(cfg: Config, ctx, source) -> list[str]:
    """The recipe's schemes; by default int8-dynamic, but int8-static for a model dominated by convolutions."""
    conv = quant_tools.conv_dominated(source.path / "model.onnx")
    if cfg.schemes is None:
        return ["int8-static"] if conv or ctx.recipe.task == "image-classification" else ["int8-dynamic"]
    if conv and "int8-dynamic" in cfg.schemes:
        ctx.console.print(f"  [yellow]{source.name}: int8-dynamic turns its convolutions into ConvInteger, which "
                          "onnxruntime's CPU kernels run about 5-11x slower than fp32; int8-static is the "
                          "scheme for CNNs[/yellow]")
    return list(cfg.schemes)


def _saved(ctx, name: str):
    from compress.artifacts import Artifact, sha256_path

    path = ctx.run_dir / "artifacts" / name
    return Artifact(name=name, path=path, format="onnx", sha256=sha256_path(path))


def _sources(cfg: Config, ctx) -> list:
    """The fp32 bundles; naming a bundle that is already quantized is an error, not a silent skip."""
    found = ctx.of_format("onnx", cfg.models)
    if cfg.models:
        for artifact in found:
            if artifact.metadata.get("precision") != "fp32":
                precision = artifact.metadata.get("precision")
                raise StageError(f"stage {ctx.stage_name}: {artifact.name} is {precision}, not fp32; "
                                 "quantize only fp32 ONNX bundles (e.g. teacher.onnx, student.onnx)")
    fp32 = [a for a in found if a.metadata.get("precision") == "fp32"]
    if not fp32:
        raise StageError(f"stage {ctx.stage_name}: no fp32 ONNX artifact to quantize; "
                         "put an export stage before it")
    return fp32


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("model.onnx*"))


def _bundle(cfg: Config, ctx, source, scheme: str, tmp: Path, options: dict, exclude=None, only=None) -> None:
    from compress.stages import quantize_int4
    from compress.tasks.common import read_json, write_json

    # Everything but the model travels unchanged (tokenizer, pooling config); the source stays untouched.
    shutil.copytree(source.path, tmp, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data"))
    # onnxruntime's quantizers write "<input>-inferred.onnx" beside their input: never inside a finished artifact
    # (a kill or a full disk would leave it there, changing the source's hash). The copy is cleaned like tmp.
    scratch = tmp.with_name(f"{tmp.name}.source")
    scratch.mkdir()
    for file in source.path.glob("model.onnx*"):
        shutil.copy2(file, scratch / file.name)
    src, dst = scratch / "model.onnx", tmp / "model.onnx"
    log = ctx.work_dir / "quantize.log"  # onnxruntime's and onnx's warnings and dumps: not the console
    try:
        with quant_tools.captured(log, f"{source.name} {scheme}") as said:
            _scheme(cfg, ctx, source, scheme, src, dst, options, exclude, only)
        options["log"] = said
        options["check"] = quant_check.verify(dst, source.path / "model.onnx", options.get("feeds") or [], scheme)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # The timing is not written into the artifact: its bytes (and hash) must not depend on the machine's load.
    write_json(tmp / "compress.json", {**read_json(source.path / "compress.json"), "precision": scheme,
                                       "check": {k: v for k, v in options["check"].items() if k != "speedup_b1"},
                                       "runtimes": _runtimes(dst, genai=(tmp / "genai_config.json").is_file()),
                                       **quantize_int4.recorded(scheme, options)})


def _runtimes(path: Path, genai: bool = False) -> dict:
    """Which runtimes load the model (quant_tools.runtimes), with the sentence a reader of compress.json needs;
    `genai`: the bundle is in onnxruntime-genai's format (export genai: true)."""
    import onnx

    found = quant_tools.runtimes(onnx.load(str(path), load_external_data=False))
    if genai:
        return {**found, "note": "onnxruntime-genai (onnxruntime_genai.Model on this folder), and onnxruntime on "
                "onnx/model.onnx with the key/value cache fed by hand (export/generate.py)"}
    note = ("standard ONNX operators only: any ONNX runtime (OpenVINO, onnxruntime-web, ...)" if found["standard_onnx"]
            else f"onnxruntime only: {', '.join(found['onnxruntime_only'])}" if found["onnxruntime_only"]
            else "onnxruntime and OpenVINO (com.microsoft operators that OpenVINO converts)")
    return {**found, "note": note}


def _scheme(cfg: Config, ctx, source, scheme: str, src: Path, dst: Path, options: dict, exclude, only) -> None:
    from compress.stages import quantize_int4

    if scheme == "int8-dynamic" and options.get("form") == "matmul-integer":
        try:
            quantize_int8.int8_portable(cfg.int8, src, dst, options, exclude, only)
        except StageError as exc:  # a fused operator unfuse.py does not rewrite: the fused form still works
            options.update(form="fused", form_why=f"{options['form_why']}; but {exc}: fused form kept")
            quantize_int8.int8_dynamic(cfg.int8, src, dst, options, exclude, only)
    elif scheme == "int8-dynamic":
        quantize_int8.int8_dynamic(cfg.int8, src, dst, options, exclude, only)
    elif scheme == "int8-portable":
        quantize_int8.int8_portable(cfg.int8, src, dst, options, exclude, only)
    elif scheme == "int8-static":
        quantize_int8.int8_static(cfg.int8, ctx, source, src, dst, options, exclude, only)
    elif scheme == "int4-weight":
        opts = quantize_int4.resolved(cfg.int4, ctx.recipe.task)
        quantize_int4.int4(opts, src, dst, options, exclude, only, quantize_int4.calibration(ctx, source, opts))
    else:
        _fp16(src, dst, options)


def _int8_form(cfg: Config, ctx, source, feeds: list) -> tuple[str, str]:
    """(form, why) of int8-dynamic for `source` on this CPU (compress/int8_form.py)."""
    import onnx

    from compress import int8_form
    from compress.targets.cpu import cpu_info

    nodes = onnx.load(str(source.path / "model.onnx"), load_external_data=False).graph.node
    if not any(n.domain == "com.microsoft" and n.op_type in ("Attention", "EmbedLayerNormalization") for n in nodes):
        return "plain", "no fused attention in the graph: quantized as it is"
    if cfg.int8.form in int8_form.FORMS:
        return cfg.int8.form, "set by the recipe (int8.form)"
    if cfg.accuracy is not None:  # the search ranks and keeps out the fused graph's nodes by name
        return "fused", "the accuracy search works on the fused graph's nodes"
    if cfg.int8.form == "measure" and feeds:
        return _measure_forms(cfg, ctx, source, feeds)
    return int8_form.rule(cpu_info())


def _measure_forms(cfg: Config, ctx, source, feeds: list) -> tuple[str, str]:
    """Both forms built in the work dir, checked against fp32, timed interleaved at the bench's setting."""
    from compress import int8_form

    work = ctx.work_dir / "int8-form" / source.name
    shutil.rmtree(work, ignore_errors=True)
    calls, cosines = {}, {}
    for form in int8_form.FORMS:
        folder = work / form
        options = {"feeds": feeds, "form": form, "form_why": "measured"}
        _bundle(cfg, ctx, source, "int8-dynamic", folder, options)
        cosines[form] = options["check"].get("cosine")
        calls[form] = {}
        for batch, seq, threads in int8_form.settings(ctx.recipe):
            session = quant_check.session(folder / "model.onnx", threads=threads)
            feed = int8_form.timing_feed(feeds[0], [i.name for i in session.get_inputs()], batch, seq)
            calls[form][f"b{batch}/s{seq}/{threads}t"] = functools.partial(session.run, None, feed)
    timings = int8_form.measure(calls, cfg.int8.form_time_budget)
    shutil.rmtree(work, ignore_errors=True)
    return int8_form.choose(timings, cosines)


def _fp16(src: Path, dst: Path, options: dict) -> None:
    import onnx

    # IO types kept (callers keep feeding float32/int64), shape computations kept in fp32, graph sorted.
    model, done = quant_tools.to_fp16(onnx.load(str(src)))
    onnx.save(model, str(dst))
    options.update(done, why="half-size weights; fast on GPUs and fp16 ARM, not on x86 CPUs")
