"""Stage export for task causal-lm: ONNX with past key/values, by optimum-onnx's exporter.

The bundle is what a generation loop needs with onnxruntime alone: model.onnx (inputs input_ids,
attention_mask, position_ids, past_key_values.<i>.key/value; outputs logits, present.<i>.key/value), the
tokenizer (with its chat template), config.json, generation_config.json and compress.json. Parity with torch
is checked in a fresh process: full-sequence logits, and the logits of one decoding step through the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

from compress.artifacts import model_file
from compress.errors import StageError
from compress.procs import die_with_parent

MIN_OPSET = 18  # optimum's minimum for Llama; also what int4 embedding quantization (opset 21) upgrades from


def run(cfg, ctx) -> list:
    from dataclasses import replace

    from compress.stages import lm_genai

    out = []
    for source in ctx.of_format("hf-model", cfg.models):
        writers = [("", "with past key/values", lambda tmp, m, s=source: _export(cfg, ctx, s, tmp, m))]
        if cfg.genai:
            writers.append((".genai", "onnxruntime-genai's format", lambda tmp, m, s=source: lm_genai.export(
                ctx, s, tmp, m, lambda bundle: _checked(cfg, ctx, s, bundle))))
        for suffix, what, write in writers:
            name, meta = f"{source.name}{suffix}.onnx", {}
            artifact = ctx.save(name, "onnx", lambda tmp, w=write, m=meta: w(tmp, m))
            artifact = replace(artifact, metadata={"source": source.name, "precision": "fp32",
                                                   "role": source.metadata.get("role", source.name), **meta})
            out.append(artifact)
            ctx.metrics[name] = meta
            ctx.console.print(f"  exported {source.name} -> {name} ({what}): parity max|diff| "
                              f"{meta['parity_max_abs']:.2e}, decode step {meta['parity_decode_max_abs']:.2e}")
            check = meta.get("tokenizer_check")
            if check and check["match"] < check["of"]:
                ctx.console.print(f"  [yellow]warning[/]: onnxruntime-genai's tokenizer gives transformers' ids for "
                                  f"{check['match']} of {check['of']} held-out texts: an app tokenizing with it "
                                  f"feeds {name} other ids {check.get('error') or ''}")
    return out


def _export(cfg, ctx, source, tmp: Path, meta: dict) -> None:
    from compress.tasks.causal_lm import bundle_info
    from compress.tasks.common import write_json

    try:
        from optimum.exporters.onnx import main_export
    except ImportError:
        raise StageError("exporting a causal LM needs optimum-onnx (pip install optimum-onnx)") from None
    opset = max(cfg.opset, MIN_OPSET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings of the TorchScript exporter: expected noise
        try:
            main_export(str(source.path), output=str(tmp), task="text-generation-with-past", opset=opset,
                        do_validation=False, device="cpu", trust_remote_code=ctx.recipe.teacher.trust_remote_code)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise StageError(f"export of {source.name} with past key/values failed: "
                             f"{str(exc).strip().splitlines()[0][:300]}") from None
    for extra in tmp.glob("model.onnx_data"):  # optimum's external-data name for big models: keep it beside
        meta["external_data"] = extra.name
    names = io_names(tmp / "model.onnx")
    write_json(tmp / "compress.json", {**bundle_info(source.path), "inputs": names["inputs"],
                                        "outputs": names["outputs"], "precision": "fp32", "opset": opset,
                                        "max_length": ctx.recipe.data.max_length})
    meta.update(opset=opset, past_inputs=sum(n.startswith("past_key_values") for n in names["inputs"]))
    meta.update(_checked(cfg, ctx, source, tmp))


def _checked(cfg, ctx, source, bundle: Path) -> dict:
    """Parity of the ONNX `bundle` with torch (full sequences, and one step through the cache); an error past
    ten times parity_max_abs (logits are unnormalised: ten times an embedding's tolerance)."""
    meta = _parity(ctx, source.path, bundle)
    worst = max(meta["parity_max_abs"], meta["parity_decode_max_abs"])
    if worst > cfg.parity_max_abs * 10:
        raise StageError(f"export of {source.name}: ONNX logits differ from torch by {worst:.3g} "
                         f"(> 10 x parity_max_abs {cfg.parity_max_abs})")
    return meta


def io_names(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {"inputs": [i.name for i in model.graph.input], "outputs": [o.name for o in model.graph.output]}


def _parity(ctx, model_dir: Path, bundle: Path) -> dict:
    texts = _parity_texts(ctx)
    texts_file = bundle.parent / f"{bundle.name}.parity.json"
    texts_file.write_text(json.dumps(texts))
    try:
        proc = subprocess.run([sys.executable, "-m", "compress.stages.lm_export", str(model_dir), str(bundle), str(texts_file)],
                              capture_output=True, text=True, timeout=900, preexec_fn=die_with_parent)
    finally:
        texts_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise StageError(f"export parity check failed to run:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parity_texts(ctx, n: int = 4) -> list[str]:
    from compress.stages import lm_text as text

    _, eval_pairs, _ = text.texts(ctx)
    return [(c + t).replace("<EOS>", "")[:400] for c, t in eval_pairs[:n]] or ["Hello, world."]


def parity(model_dir: str, bundle: str, texts: list[str]) -> dict:
    """Max |logit difference| ONNX vs torch over `texts` (full sequences), and for one decoding step."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from compress.targets.harness import LMSession
    from compress.tasks.causal_lm import load_backbone, load_tokenizer

    model = load_backbone(Path(model_dir)).eval()
    tokenizer = load_tokenizer(Path(model_dir))
    lm = LMSession(ort.InferenceSession(str(model_file(Path(bundle))), providers=["CPUExecutionProvider"]))
    worst, decode = 0.0, 0.0
    for text in texts:
        ids = np.asarray([tokenizer(text, add_special_tokens=False)["input_ids"][:64] or [0]], dtype=np.int64)
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids)).logits.numpy()
        logits, past = lm.prefill(ids)
        worst = max(worst, float(np.max(np.abs(logits - ref))))
        if ids.shape[1] > 1:  # the last token again, through the cache of the others
            _, past = lm.prefill(ids[:, :-1])
            step, _ = lm.step(ids[:, -1:], past, ids.shape[1] - 1)
            decode = max(decode, float(np.max(np.abs(step[:, -1] - ref[:, -1]))))
    return {"parity_max_abs": worst, "parity_decode_max_abs": decode, "parity_texts": len(texts)}


if __name__ == "__main__":
    model_dir, bundle, texts_file = sys.argv[1:4]
    print(json.dumps(parity(model_dir, bundle, json.loads(Path(texts_file).read_text()))))
