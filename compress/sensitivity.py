"""Accuracy-aware quantization: which nodes cost the quality, and a time-boxed search that keeps them in
higher precision (int8 schemes: fp32; int4-weight: 8-bit MatMulNBits).

Quality is the task's headline metric against the teacher's PyTorch fp32 outputs on held-out texts, as in
the bench stage; the drop is the fp32 source's quality minus the quantized model's. Sensitivity quantizes one
group at a time (a layer's quantizable nodes, or one node) and ranks the groups by the drop that alone causes.
The search then leaves the most sensitive groups out, one more per step, until the drop is within budget,
the time is spent or nothing is left. The best model so far is saved under its final artifact name after
every step that improves on it, so a killed or timed-out search still leaves it, and `<name>.search.json` in
the stage's work folder says what it reached.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from compress.artifacts import remove, write_text_atomic

# Operators each scheme quantizes (with a constant weight): the candidates for exclusion.
SCHEME_OPS = {"int8-dynamic": ("MatMul", "Attention", "Gemm"), "int8-static": ("MatMul",),
              "int4-weight": ("MatMul",)}
# Operators whose constant input is a weight: a scheme's activation-only operators (Clip, Pad) are no candidates.
WEIGHTED_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "Gather"}
KEPT_PRECISION = {"int8-dynamic": "fp32", "int8-static": "fp32", "int4-weight": "int8"}
LAYER = re.compile(r"layers?[._/](\d+)(?:[./]|$)|^Attention_(\d+)$")
# A CNN's block, from torch's module path in the node name: /features/features.3/depthwise/.../Conv -> features.3
BLOCK = re.compile(r"([A-Za-z_]\w*)[._](\d+)(?:[./]|$)")
LATENCY_SECONDS = 0.3


def candidates(model_path: Path, scheme: str, op_types: list[str] | None = None,
               skip: list[str] | tuple = ()) -> list[str]:
    """Nodes the scheme quantizes: of its operator types, with a weight that is an initializer."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    ops = set(op_types or SCHEME_OPS[scheme]) & WEIGHTED_OPS
    return [n.name for n in model.graph.node
            if n.op_type in ops and n.name not in skip and any(i in weights for i in n.input[1:])]


def group_nodes(nodes: list[str], granularity: str) -> dict[str, list[str]]:
    """Groups in graph order: `layer.N` (from the node name; fused Attention_N is layer N), `embeddings`,
    a CNN's numbered block (`features.3`: its depthwise and pointwise Convs together), `other`; or one group
    per node."""
    if granularity == "node":
        return {n: [n] for n in nodes}
    groups: dict[str, list[str]] = {}
    for node in nodes:
        match = LAYER.search(node)
        block = None if match else BLOCK.search(node)
        if match:
            key = f"layer.{match.group(1) or match.group(2)}"
        elif "embed" in node.lower():
            key = "embeddings"
        else:
            key = f"{block.group(1)}.{block.group(2)}" if block else "other"
        groups.setdefault(key, []).append(node)
    return groups


class Evaluator:
    """Scores ONNX models on held-out texts against the teacher in PyTorch fp32 (computed once)."""

    def __init__(self, ctx, source, eval_size: int):
        import numpy as np

        from compress.tasks.common import for_model

        task = ctx.task
        teacher, onnx_teacher = ctx.teacher(required=False), ctx.onnx_teacher()
        data = for_model(task, task.load_data(ctx.recipe.data), teacher.path if teacher else None,
                         ctx.recipe.data.source)
        texts = task.examples(data.eval)[:eval_size]
        self.task, self.count = task, len(texts)
        self.labels = np.asarray(data.eval.labels[:eval_size]) if data.eval.labels else None
        self.inputs = task.inputs(source.path)
        self.batches = self.inputs.batches(texts, ctx.recipe.data.max_length, 32)
        self.timing = self.inputs.encode(texts[:1], ctx.recipe.data.max_length, pad_to_max=True)
        self.reference = None
        if teacher is not None:
            self.reference = self._teacher_outputs(teacher.path)
        elif onnx_teacher is not None:  # no PyTorch teacher: the ONNX model given as the teacher is the reference
            self.reference = self._onnx_outputs(onnx_teacher.path / "model.onnx")
        self.headline, self.basis_reason = self._basis(data, getattr(task, "HEADLINE", None), teacher or onnx_teacher)

    def _basis(self, data, headline, teacher):
        """Classification: agreement with the fp32 teacher when the labels do not fit the model (see
        compress/tasks/quality_basis.py); the task's headline otherwise."""
        if self.reference is None or headline != "accuracy":
            return headline, None
        from compress.tasks.quality_basis import decide

        try:
            model_labels = self.task.bundle_info(teacher.path).get("labels")
        except (OSError, ValueError, KeyError):  # a folder without the file that names its classes
            model_labels = None
        scores = self.task.quality(self.reference, self.reference, self.labels)
        return decide(headline, scores, has_labels=self.labels is not None,
                      data_labels=getattr(data, "label_names", None), model_labels=model_labels)

    def _teacher_outputs(self, path: Path):
        import torch

        from compress.tasks.common import unbatch

        model = self.task.load_model(path).eval()
        with torch.inference_mode():
            out = [model(*(torch.from_numpy(b[n]) for n in self.inputs.names)).numpy() for b in self.batches]
        return unbatch(out, self.batches)

    def _onnx_outputs(self, model_path: Path):
        from compress.tasks.common import unbatch

        session = self._session(model_path)
        return unbatch([session.run(None, {n: b[n] for n in self.inputs.names})[0] for b in self.batches],
                       self.batches)

    def _session(self, model_path: Path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def quality(self, model_path: Path) -> float | None:
        """The headline metric of the model at `model_path` (None when it cannot be scored)."""
        import math

        from compress.tasks.common import unbatch

        if self.reference is None:
            return None
        session = self._session(model_path)
        out = [session.run(None, {n: b[n] for n in self.inputs.names})[0] for b in self.batches]
        score = self.task.quality(self.reference, unbatch(out, self.batches), self.labels).get(self.headline)
        return score if score is not None and math.isfinite(score) else None

    def latency_ms(self, model_path: Path) -> float:
        """A quick p50 at batch 1, the recipe's max_length, 1 thread: enough to see what a step costs."""
        import statistics

        session = self._session(model_path, threads=1)
        for _ in range(3):
            session.run(None, self.timing)
        samples, end = [], time.perf_counter() + LATENCY_SECONDS
        while time.perf_counter() < end or len(samples) < 5:
            start = time.perf_counter()
            session.run(None, self.timing)
            samples.append((time.perf_counter() - start) * 1000)
        return round(statistics.median(samples), 3)


def rank(build: Callable, evaluator: Evaluator, groups: dict[str, list[str]], base: float, scratch: Path,
         deadline: float) -> tuple[list[dict], bool]:
    """Each group quantized alone: its drop, largest first; and whether every group was measured in time."""
    table = []
    for index, (group, nodes) in enumerate(groups.items()):
        if time.monotonic() > deadline:
            return _ranked(table), False
        folder = scratch / f"only-{index}"
        build(folder, only=nodes)
        quality = evaluator.quality(folder / "model.onnx")
        shutil.rmtree(folder, ignore_errors=True)
        drop = None if quality is None else round(base - quality, 6)
        table.append({"group": group, "nodes": nodes, "quality": quality, "drop": drop})
    return _ranked(table), True


def _ranked(table: list[dict]) -> list[dict]:
    table = sorted(table, key=lambda r: -(r["drop"] if r["drop"] is not None else float("inf")))
    return [{"rank": i + 1, **row} for i, row in enumerate(table)]


class Search:
    """One (model, scheme) search: step 0 quantizes everything, step k keeps the k most sensitive groups out."""

    def __init__(self, name: str, scheme: str, max_drop: float, time_budget_s: float, work: Path):
        self.name, self.scheme, self.max_drop = name, scheme, max_drop
        self.started, self.budget = time.monotonic(), time_budget_s
        self.deadline = self.started + time_budget_s
        self.log_path = work / f"{name}.search.json"
        self.scratch = work / f"{name}.search"
        remove(self.scratch)  # a leftover of an interrupted search (a link is removed itself, never followed)
        self.scratch.mkdir(parents=True)
        self.state: dict = {"artifact": name, "scheme": scheme, "max_quality_drop": max_drop,
                            "time_budget_s": time_budget_s, "kept_precision": KEPT_PRECISION[scheme],
                            "status": "running", "steps": [], "best_step": None, "sensitivity": []}

    def run(self, build: Callable, evaluator: Evaluator, source_path: Path, groups: dict[str, list[str]],
            save: Callable[[Path, dict], None]) -> dict:
        base = evaluator.quality(source_path / "model.onnx")
        self.state.update(source_quality=base, eval_texts=evaluator.count, groups=len(groups),
                          headline=getattr(evaluator, "headline", None),
                          quality_basis=getattr(evaluator, "basis_reason", None),
                          candidates=sum(len(v) for v in groups.values()))
        try:
            best = self._step(build, evaluator, [], [], save)
            if base is None:
                return self._finish("not searched: quality cannot be scored (no teacher outputs)")
            if best["within_budget"]:
                return self._finish("within budget without exclusions")
            table, complete = rank(build, evaluator, groups, base, self.scratch, self.deadline)
            self.state["sensitivity"] = table
            self._log()
            if not complete:
                return self._finish("time budget spent during the sensitivity analysis")
            order = [row for row in table if row["drop"] is None or row["drop"] > 0] or table
            for k in range(1, len(order) + 1):
                if time.monotonic() > self.deadline:
                    return self._finish("time budget spent")
                if k == len(groups):
                    return self._finish("nothing left to exclude (every group would be kept in "
                                        f"{KEPT_PRECISION[self.scheme]})")
                chosen = order[:k]
                step = self._step(build, evaluator, [r["group"] for r in chosen],
                                  [n for r in chosen for n in r["nodes"]], save)
                if step["within_budget"]:
                    return self._finish("within budget")
            return self._finish("nothing left to exclude: every group that costs quality is kept in "
                                f"{KEPT_PRECISION[self.scheme]}")
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _step(self, build: Callable, evaluator: Evaluator, groups: list[str], nodes: list[str],
              save: Callable) -> dict:
        index = len(self.state["steps"])
        started = time.monotonic()
        folder = self.scratch / f"step-{index}"
        build(folder, exclude=nodes)
        quality = evaluator.quality(folder / "model.onnx")
        base = self.state["source_quality"]
        drop = None if quality is None or base is None else round(base - quality, 6)
        step = {"step": index, "excluded_groups": groups, "excluded_nodes": nodes, "quality": quality,
                "drop": drop, "within_budget": drop is not None and drop <= self.max_drop,
                "latency_ms": evaluator.latency_ms(folder / "model.onnx"),
                "seconds": round(time.monotonic() - started, 2)}
        self.state["steps"].append(step)
        best = self.best()
        if best is None or _better(step, best):
            self.state["best_step"] = index
            save(folder, step)  # atomic, under the final name: the best so far survives a kill
        shutil.rmtree(folder, ignore_errors=True)
        self._log()
        return step

    def best(self) -> dict | None:
        index = self.state["best_step"]
        return None if index is None else self.state["steps"][index]

    def _finish(self, reason: str) -> dict:
        best = self.best()
        self.state.update(status="done", reason=reason, seconds=round(time.monotonic() - self.started, 2),
                          within_budget=bool(best and best["within_budget"]))
        self._log()
        return self.state

    def _log(self) -> None:
        write_text_atomic(self.log_path, json.dumps(self.state, indent=2) + "\n")


def _better(step: dict, best: dict) -> bool:
    if step["within_budget"] != best["within_budget"]:
        return step["within_budget"]
    return (step["quality"] or float("-inf")) > (best["quality"] or float("-inf"))


def summary(state: dict) -> dict:
    """What the stage metrics and the artifact's metadata keep of a search."""
    best = state["steps"][state["best_step"]] if state.get("best_step") is not None else {}
    return {
        "max_quality_drop": state["max_quality_drop"], "time_budget_s": state["time_budget_s"],
        "status": state["status"], "reason": state.get("reason"), "within_budget": state.get("within_budget"),
        "source_quality": state.get("source_quality"), "quality": best.get("quality"), "drop": best.get("drop"),
        "headline": state.get("headline"), "quality_basis": state.get("quality_basis"),
        "best_step": state.get("best_step"), "kept_precision": state["kept_precision"],
        "excluded_groups": best.get("excluded_groups", []), "excluded_nodes": best.get("excluded_nodes", []),
        "seconds": state.get("seconds"), "eval_texts": state.get("eval_texts"),
        "steps": [{k: s[k] for k in ("step", "excluded_groups", "quality", "drop", "latency_ms", "within_budget",
                                     "seconds")} | {"excluded_nodes": len(s["excluded_nodes"])}
                  for s in state["steps"]],
        "sensitivity": [{k: r[k] for k in ("rank", "group", "drop")} | {"nodes": len(r["nodes"])}
                        for r in state.get("sensitivity", [])],
    }


def write_tables(folder: Path, state: dict) -> None:
    """The ranked sensitivity table and the steps, as JSON and markdown, into a new artifact folder."""
    folder.mkdir()
    (folder / "sensitivity.json").write_text(json.dumps(state.get("sensitivity", []), indent=2) + "\n")
    (folder / "search.json").write_text(json.dumps(state, indent=2) + "\n")
    (folder / "sensitivity.md").write_text(render_markdown(state))


def render_markdown(state: dict) -> str:
    kept = state["kept_precision"]
    lines = [f"# Accuracy search: {state['artifact']}", "",
             f"Budget: quality drop <= {state['max_quality_drop']:g} vs the fp32 source "
             f"(quality {_f(state.get('source_quality'))} on {state.get('eval_texts')} texts), "
             f"time {state['time_budget_s']:g} s. Result: {state.get('reason', state['status'])}.", "",
             "## Sensitivity (each group quantized alone)", "",
             "| rank | group | nodes | quality | drop |", "|---|---|---|---|---|"]
    lines += [f"| {r['rank']} | {r['group']} | {len(r['nodes'])} | {_f(r['quality'])} | {_f(r['drop'])} |"
              for r in state.get("sensitivity", [])]
    lines += ["", f"## Steps (excluded groups kept in {kept})", "",
              "| step | excluded | quality | drop | p50 ms (b1, 1 thread) | within budget |",
              "|---|---|---|---|---|---|"]
    for s in state["steps"]:
        best = " (best)" if s["step"] == state.get("best_step") else ""
        lines.append(f"| {s['step']}{best} | {', '.join(s['excluded_groups']) or '-'} | {_f(s['quality'])} | "
                     f"{_f(s['drop'])} | {s['latency_ms']:.2f} | {'yes' if s['within_budget'] else 'no'} |")
    best = state["steps"][state["best_step"]] if state.get("best_step") is not None else None
    if best and best["excluded_nodes"]:
        lines += ["", f"Nodes kept in {kept}:", "", *(f"- `{n}`" for n in best["excluded_nodes"])]
    return "\n".join(lines) + "\n"


def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"
