"""Model cards: one Markdown card per exported model, with Hugging Face front matter.

A card says where a model comes from (teacher id, revision and licence; data source; the recipe and
its hash; every stage and its settings), how it measured on each provider, what it is for and where it
stops, and what it saves against the teacher. Bundles are hashed artifacts and never change once
written, so the cards live beside them: `<run dir>/model_cards/<artifact>.md`, and `MODEL_CARD.md` in
the run directory for the recommended variant. The front matter follows the Hugging Face model-card
metadata (license, base_model, tags, datasets, model-index), so a card can be pushed to a hub as is.
"""

from __future__ import annotations

import re
from pathlib import Path

from compress import licenses
from compress.artifacts import remove, write_text_atomic
from compress.report.card_usage import how_to
from compress.report.decision import real_lengths_note, where

CARD_FORMATS = ("onnx", "hf-model")
PIPELINE_TAGS = {"sentence-embedding": "sentence-similarity", "text-classification": "text-classification",
                 "image-classification": "image-classification"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
USES = {
    "sentence-embedding": "sentence embeddings for semantic search, clustering and similarity of short "
                          "English texts like those it was evaluated on",
    "text-classification": "classifying short texts into the labels it was trained on",
    "image-classification": "classifying images like those it was evaluated on into the labels it was trained on",
}


def write_model_cards(run_dir: Path, report: dict, manifest: dict) -> list[Path]:
    """Write model_cards/<artifact>.md for every exported model and MODEL_CARD.md; return the paths."""
    run_dir = Path(run_dir)
    written = []
    names = card_artifacts(manifest)
    remove_stale_cards(run_dir / "model_cards", names)
    for name in names:
        path = run_dir / "model_cards" / f"{name}.md"
        write_text_atomic(path, build_card(name, report, manifest))
        written.append(path)
    main = main_variant(report, manifest)
    if main is not None:
        write_text_atomic(run_dir / "MODEL_CARD.md", build_card(main, report, manifest))
        written.append(run_dir / "MODEL_CARD.md")
    return written


CARD_SIGNATURE = "made by `compress` run"  # in every card's first paragraph (see _intro)


def remove_stale_cards(folder: Path, names: list[str]) -> list[str]:
    """Remove the cards compress wrote for models no longer in the run (a changed quantize scheme): a card of
    another name that compress did not write (no front matter and signature) is left alone. Returns the names."""
    removed = []
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        if path.stem in names or path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")[:4000]
        except OSError:
            continue
        if text.startswith("---\n") and CARD_SIGNATURE in text:
            remove(path)
            removed.append(path.stem)
    return removed


def card_artifacts(manifest: dict) -> list[str]:
    """Every model the run made (ONNX bundles, HF folders): not the teacher it was given."""
    return [name for name, a in (manifest.get("artifacts") or {}).items()
            if a.get("format") in CARD_FORMATS and name != "teacher"]


def main_variant(report: dict, manifest: dict) -> str | None:
    """The recommended variant; failing that, the measured model closest to the teacher's quality."""
    best = report.get("recommendation")
    names = card_artifacts(manifest)
    if best and best["variant"] in names:
        return best["variant"]
    rows = [r for r in report.get("rows", []) if r["variant"] in names and r.get("quality_drop") is not None]
    if rows:
        return min(rows, key=lambda r: r["quality_drop"])["variant"]
    return names[-1] if names else None


def provenance(manifest: dict) -> dict:
    """The licence decision the runner recorded; a run without one gets it recomputed from the teacher."""
    if manifest.get("provenance"):
        return manifest["provenance"]
    teacher = (manifest.get("artifacts") or {}).get("teacher") or {}
    recipe = manifest.get("recipe") or {}
    declared = (teacher.get("metadata") or {}).get("license") or (recipe.get("teacher") or {}).get("license")
    acknowledge = (recipe.get("provenance") or {}).get("acknowledge")
    folder = Path(teacher["path"]) if teacher.get("path") else None
    return licenses.check_teacher(folder, declared, acknowledge).to_json()


def lineage(name: str, manifest: dict) -> list[str]:
    """Artifact names from `name` back to the first artifact of the run (the teacher), newest first."""
    artifacts, chain = manifest.get("artifacts") or {}, [name]
    while True:
        meta = (artifacts.get(chain[-1]) or {}).get("metadata") or {}
        source = meta.get("source") or meta.get("teacher")  # a distilled student names its teacher
        if source not in artifacts or source in chain:
            return chain
        chain.append(source)


def _producer(name: str, manifest: dict) -> tuple[str | None, dict]:
    for stage_name, stage in (manifest.get("stages") or {}).items():
        if name in (stage.get("artifacts") or []):
            return stage_name, stage
    return None, {}


def _stage_config(stage_name: str, manifest: dict) -> dict:
    for stage in (manifest.get("recipe") or {}).get("stages") or []:
        if stage.get("name") == stage_name:
            return stage
    return {}


# ---------------------------------------------------------------- front matter


def front_matter(name: str, report: dict, manifest: dict, prov: dict) -> dict:
    recipe = manifest.get("recipe") or {}
    artifact = (manifest.get("artifacts") or {}).get(name) or {}
    meta, task = artifact.get("metadata") or {}, recipe.get("task")
    teacher_source = (recipe.get("teacher") or {}).get("source") or ""
    data_source = (recipe.get("data") or {}).get("source") or ""
    chain = lineage(name, manifest)
    distilled = any(_producer(n, manifest)[1].get("kind") == "distill" for n in chain)
    precision = meta.get("precision")
    out: dict = {"license": prov.get("license") or "unknown"}
    if HUB_ID.match(teacher_source):
        out["base_model"] = teacher_source
        if precision not in (None, "fp32") and not distilled:
            out["base_model_relation"] = "quantized"
    out["library_name"] = "onnx" if artifact.get("format") == "onnx" else (
        "sentence-transformers" if task == "sentence-embedding" else "transformers")
    if task in PIPELINE_TAGS:
        out["pipeline_tag"] = PIPELINE_TAGS[task]
    tags = ["compress", task, "onnx" if artifact.get("format") == "onnx" else None,
            "distillation" if distilled else None, precision if precision not in (None, "fp32") else None,
            "quantized" if precision not in (None, "fp32") else None]
    out["tags"] = [t for t in tags if t]
    if HUB_ID.match(data_source):
        out["datasets"] = [data_source]
    results = _model_index_results(name, report, recipe)
    if results:
        out["model-index"] = [{"name": f"{recipe.get('name') or 'run'}-{name}", "results": results}]
    return out


def _model_index_results(name: str, report: dict, recipe: dict) -> list[dict]:
    data = recipe.get("data") or {}
    task = recipe.get("task") or "unknown"
    metrics = []
    for row in variant_rows(name, report):
        for key, value in (row.get("quality") or {}).items():
            if value is not None:
                metrics.append({"type": key, "value": round(value, 6),
                                "name": f"{key} vs the teacher, {where(row)} {row['setting']}"})
    if not metrics:
        return []
    source = data.get("source") or "unknown"
    return [{"task": {"type": PIPELINE_TAGS.get(task, task), "name": task},
             "dataset": {"name": Path(source.split(":", 1)[-1]).name or source, "type": source,
                         "split": f"held-out {data.get('eval_size', '?')} rows (seed {data.get('seed', 0)})"},
             "metrics": metrics}]


def variant_rows(name: str, report: dict) -> list[dict]:
    return [r for r in report.get("rows", []) if r["variant"] == name]


# ---------------------------------------------------------------- body


def build_card(name: str, report: dict, manifest: dict) -> str:
    """The Markdown card of one artifact, front matter first."""
    import yaml

    prov = provenance(manifest)
    meta = front_matter(name, report, manifest, prov)
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    sections = [_intro(name, report, manifest), _metrics(name, report), _cost(name, report),
                _lineage(name, manifest, prov), _uses(name, report, manifest, prov), how_to(name, manifest)]
    return f"---\n{head}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


WHAT = {"onnx": "An ONNX bundle (model.onnx, tokenizer, compress.json)", "hf-model": "A Hugging Face model folder"}


def _intro(name: str, report: dict, manifest: dict) -> str:
    recipe = manifest.get("recipe") or {}
    artifact = (manifest.get("artifacts") or {}).get(name) or {}
    teacher = (recipe.get("teacher") or {}).get("source", "?")
    lines = [f"# {name}", "",
             (f"{WHAT.get(artifact.get('format'), artifact.get('format'))} made by `compress` run "
             f"`{recipe.get('name', '?')}` ({recipe.get('task', '?')}) from the teacher `{teacher}`; precision "
             f"{(artifact.get('metadata') or {}).get('precision', 'fp32')}.")]
    best = report.get("recommendation")
    if best and best["variant"] == name:
        lines += ["", f"**Recommended by this run.** {report.get('recommendation_text', '')}"]
    elif report.get("recommendation_text"):
        lines += ["", f"**Not recommended by this run.** {report['recommendation_text']}"]
    flags = sorted({f for r in variant_rows(name, report) for f in r.get("flags") or [] if f != "baseline"})
    if flags:
        lines += ["", "Flags from the benchmark: " + "; ".join(flags) + "."]
    return "\n".join(lines)


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


METRIC_COLUMNS = ("runtime/provider", "setting", "status", "p50 ms", "p90 ms", "p99 ms", "per s", "peak RSS MB",
                  "{headline}", "other quality", "drop")


def _metrics(name: str, report: dict) -> str:
    rows = variant_rows(name, report)
    if not rows:
        return "## Metrics\n\nThis model was not benchmarked in this run."
    headline = report.get("headline", "quality")
    header = [c.format(headline=headline) for c in METRIC_COLUMNS]
    basis = report.get("quality_basis") or "held-out texts against the teacher's PyTorch fp32 outputs"
    per = ("latency is per generated token (p50/p90/p99) at the batch size/prompt length/threads of the setting"
           if any(r.get("tokens_per_s") is not None for r in rows)
           else "latency is per call at the batch size/sequence length/threads of the setting")
    note = real_lengths_note(rows)
    lines = ["## Metrics per provider", "",
             f"Quality ({headline} and others) is measured on {basis}; {per}{f' ({note})' if note else ''}."
             + (f" The headline is {headline}: {report['headline_reason']}." if report.get("headline_reason") else ""),
             "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        others = ", ".join(f"{k} {v:.4f}" for k, v in (r.get("quality") or {}).items()
                           if k != headline and v is not None) or "-"
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason') or '-'}"
        cells = [where(r), r["setting"], status, _num(r["p50_ms"], ".2f"), _num(r["p90_ms"], ".2f"),
                 _num(r["p99_ms"], ".2f"), _num(r["throughput"], ".1f"), _num(r["peak_rss_mb"], ".0f"),
                 _num(r["headline"], ".4f"), others, _num(r["quality_drop"], ".4f")]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _cost(name: str, report: dict) -> str:
    """Latency, size and CPU time per million inputs against the baseline at the same setting."""
    lines = []
    for r in variant_rows(name, report):
        base = next((b for b in report.get("rows", []) if b.get("is_baseline") and b["setting"] == r["setting"]),
                    None)
        if r["status"] != "ok" or r.get("p50_ms") is None or base is None or base is r:
            continue
        hours = [1e6 / x["throughput"] / 3600 if x.get("throughput") else None for x in (r, base)]
        lines.append(
            f"- {where(r)} at {r['setting']}: p50 {r['p50_ms']:.2f} ms vs {base['p50_ms']:.2f} ms "
            f"({_num(r.get('speedup'), '.2f')}x the speed); size {_num(r.get('size_mb'), '.1f')} MB vs "
            f"{_num(base.get('size_mb'), '.1f')} MB ({_num(r.get('size_ratio'), '.2f')}x); "
            f"{_num(hours[0], '.2f')} vs {_num(hours[1], '.2f')} CPU-thread hours per million inputs")
    if not lines:
        return ""
    baseline = report.get("baseline", "the baseline").split(";")[0]  # the comparison, not its fine print
    return "\n".join([f"## Cost saved against {baseline}", "", *lines])


def _lineage(name: str, manifest: dict, prov: dict) -> str:
    recipe = manifest.get("recipe") or {}
    teacher, data = recipe.get("teacher") or {}, recipe.get("data") or {}
    ack, conditions = prov.get("acknowledged"), prov.get("conditions")
    versions = ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items() if k != "platform")
    lines = [
        "## Lineage", "",
        (f"- teacher: `{teacher.get('source', '?')}`, revision {teacher.get('revision') or 'not pinned'}, "
        f"sha256 `{((manifest.get('artifacts') or {}).get('teacher') or {}).get('sha256', '?')}`"),
        f"- teacher licence: {prov.get('license', 'unknown')} (from the {prov.get('source', '?')})"
        + "".join(f"; {reason}" for reason in prov.get("reasons") or []),
        *([f'- licence acknowledged by the recipe: "{ack}"'] if ack else []),
        *([f"- conditions passed on to this model: {conditions}"] if conditions else []),
        (f"- data: `{data.get('source', '?')}`"
        + ("" if recipe.get("task") == "image-classification" else f" (field `{data.get('text_field', 'text')}`)")
        + ", licence "
        f"{data.get('license') or 'not declared in the recipe'}; {data.get('eval_size', '?')} rows held out "
        f"for evaluation (seed {data.get('seed', 0)})"),
        *_unlabeled_lines(data.get("unlabeled")),
        *_generated_lines(manifest),
        *student_shape_lines(manifest),
        f"- recipe: `{manifest.get('recipe_file') or '?'}`, sha256 `{manifest.get('recipe_sha256', '?')}`",
        f"- software: compress {manifest.get('compress_version', '?')}; {versions}",
        "", "Each step, from the teacher to this model:", ""]
    lines += [_step(step, manifest) for step in reversed(lineage(name, manifest))]
    return "\n".join(lines)


def _unlabeled_lines(extra: dict | None) -> list[str]:
    """data.unlabeled: texts the distillation learned from beyond the training split (their targets: the teacher's)."""
    if not extra:
        return []
    limit = f", at most {extra['limit']:,}" if extra.get("limit") else ""
    return [f"- unlabelled texts the teacher labelled for distillation: `{extra.get('source', '?')}` (field "
            f"`{extra.get('text_field', 'text')}`{limit})"]


def student_shape_lines(manifest: dict) -> list[str]:
    """What width pruning and vocabulary trimming kept of the teacher (issue 16), when a distill stage did it."""
    out = []
    for stage in (manifest.get("stages") or {}).values():
        metrics = stage.get("metrics") or {} if stage.get("kind") == "distill" else {}
        pruned, vocab = metrics.get("pruning"), metrics.get("vocab")
        if pruned:
            out.append(f"- width pruning: {pruned['heads']['kept_per_layer']} of {pruned['heads']['of']} attention "
                       f"heads and {pruned['ffn']['kept_per_layer']} of {pruned['ffn']['of']} FFN neurons kept per "
                       "layer (the most active on the recipe's texts)")
        if vocab:
            out.append(f"- vocabulary: {vocab['vocab_size']:,} of {vocab['vocab_original']:,} word pieces kept; "
                       f"{vocab['heldout_outside_rate']:.2%} of held-out tokens fall outside and are spelled "
                       "with shorter pieces")
    return out


def _generated_lines(manifest: dict) -> list[str]:
    """The teacher-written training text of a causal-lm run (the generate stage), when there is one."""
    out = []
    for name, stage in (manifest.get("stages") or {}).items():
        if stage.get("kind") != "generate":
            continue
        metrics, config = stage.get("metrics") or {}, _stage_config(name, manifest)
        artifact = (manifest.get("artifacts") or {}).get("generated") or {}
        out.append(f"- training text: {metrics.get('completions', '?')} completions written by the teacher "
                   f"(stage `{name}`: {metrics.get('train', '?')} trained on, {metrics.get('eval', '?')} held out for "
                   f"evaluation; sampling {'on' if config.get('do_sample', True) else 'off'}, temperature "
                   f"{config.get('temperature')}, top_p {config.get('top_p')}, at most {config.get('max_new_tokens')} "
                   f"tokens), artifact `generated` sha256 `{artifact.get('sha256', '?')}`, with provenance.json")
    return out


def _step(step: str, manifest: dict) -> str:
    import yaml

    artifact = (manifest.get("artifacts") or {}).get(step) or {}
    stage_name, stage = _producer(step, manifest)
    head = f"1. `{step}` ({artifact.get('format', '?')}, sha256 `{artifact.get('sha256', '?')}`)"
    if stage_name is None:
        return head + ": the teacher, as given"
    config = {k: v for k, v in _stage_config(stage_name, manifest).items() if k not in ("name", "kind")}
    metrics = stage.get("metrics") or {}
    # Stages that make several artifacts (export, quantize) key their metrics by artifact name.
    metrics = metrics[step] if isinstance(metrics.get(step), dict) else metrics
    body = yaml.safe_dump({"settings": config, "metrics": metrics}, sort_keys=False, width=100,
                          allow_unicode=True)
    indented = "\n".join("   " + line for line in body.rstrip().splitlines())
    return (f"{head}: stage `{stage_name}` ({stage.get('kind', '?')}, {stage.get('status', '?')}, "
            f"{stage.get('seconds', '?')} s)\n\n   ```yaml\n{indented}\n   ```")


def _uses(name: str, report: dict, manifest: dict, prov: dict) -> str:
    recipe = manifest.get("recipe") or {}
    task, data = recipe.get("task"), recipe.get("data") or {}
    cpu = (report.get("environment") or {}).get("cpu") or {}
    lic = licenses.lookup(prov.get("license"))
    commercial = {True: "allowed", False: "not allowed", None: "unclear"}[lic.commercial]
    return "\n".join([
        "## Intended use and limits", "",
        (f"- Intended use: {USES.get(task, task or 'the teacher task')}, where the speed-up matters more than "
        "the measured quality drop."),
        (f"- Quality was measured only on {data.get('eval_size', '?')} held-out rows of "
        f"`{data.get('source', '?')}`, and against the teacher's outputs, not human labels: it says how closely "
        "this model follows the teacher there, not how good either is on your data. Evaluate on your own data."),
        ("- The model inherits the teacher's limits and biases; compression can add errors that the averages "
        "above hide (rare words, long inputs, other languages)."),
        (f"- Latency was measured on {cpu.get('model', '?')} ({cpu.get('arch', '?')}, {cpu.get('cores', '?')} "
        "cores) with the threads of each setting; other hardware and providers give other numbers."),
        *([] if task == "image-classification" else
          [f"- Inputs longer than {data.get('max_length', '?')} tokens are truncated."]),
        *index_lines(name, manifest),
        f"- Licence: {lic.name}; commercial use {commercial}"
        + (f"; {lic.conditions}" if lic.conditions else "") + ". This summary is not legal advice.",
    ])


def index_lines(name: str, manifest: dict) -> list[str]:
    """Whether a sentence-embedding student's vectors can be searched in an index built with the teacher."""
    artifacts = manifest.get("artifacts") or {}
    for link in lineage(name, manifest):
        meta = (artifacts.get(link) or {}).get("metadata") or {}
        if "index_compatible" in meta:
            answer = "yes" if meta["index_compatible"] else "no"
            note = meta.get("index_note") or f"projection {meta.get('projection')}"
            return [f"- Index-compatible with the teacher: **{answer}** ({note})."]
    return []
