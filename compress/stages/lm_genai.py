"""Export for task causal-lm in onnxruntime-genai's format (export stage, `genai: true`).

onnxruntime-genai's model builder writes the decoder the ONNX Runtime team tunes for generation: fused
GroupQueryAttention (rotary embedding inside) over a key/value buffer shared between steps, packed QKV and fused
RMS norms, with genai_config.json beside it. The bundle holds the fp32 graph (quantize's int4-weight then
quantizes it like any other), the tokenizer and compress.json. On SmolLM2-135M, 1 thread, the same q4_1 weights
generated 2.6x faster through it than through optimum's graph (bench/results/*-llm-peers.md).

The builder is run in its own process (it imports torch and transformers, and prints a lot). onnxruntime-genai
is pinned to 0.14.1 in compress[llm]: its builder is the newest that runs with transformers < 4.58 (0.16 and
later import transformers 5 classes), which optimum-onnx requires.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from compress.errors import StageError
from compress.procs import die_with_parent

BUILDER = "onnxruntime_genai.models.builder"


def export(ctx, source, tmp: Path, meta: dict, parity) -> None:
    """The genai-format bundle of the hf-model `source` into `tmp`; `parity(tmp)` checks it against torch."""
    from importlib.util import find_spec

    from compress.stages.lm_export import io_names
    from compress.tasks.causal_lm import bundle_info, byte_level_decoding
    from compress.tasks.common import read_json, write_json

    if find_spec("onnxruntime_genai") is None:
        raise StageError("export genai: onnxruntime-genai is not installed (pip install 'compress[llm]')")
    config = read_json(source.path / "config.json")
    heads = config.get("num_attention_heads") or 1
    head_size = config.get("head_dim") or config.get("hidden_size", 0) // heads
    if head_size % 16:  # onnxruntime's CPU GroupQueryAttention refuses it at the first run, deep in a stack trace
        raise StageError(f"export genai: {source.name} has attention heads of {head_size} dimensions; onnxruntime's "
                         "GroupQueryAttention (genai's format) needs a multiple of 16: export without genai: true")
    cache = tmp.with_name(f"{tmp.name}.builder-cache")  # the builder's scratch files: removed whatever happens
    log = ctx.work_dir / f"{source.name}.genai-builder.log"
    try:
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.run([sys.executable, "-m", BUILDER, "-i", str(source.path), "-o", str(tmp),
                                   "-p", "fp32", "-e", "cpu", "-c", str(cache)], stdout=out, stderr=subprocess.STDOUT,
                                  timeout=3600, preexec_fn=die_with_parent)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise StageError(f"export of {source.name} in onnxruntime-genai's format failed (exit {proc.returncode}; "
                         f"log {log}): {' | '.join(tail)[:400]}")
    for name in ("config.json", "generation_config.json"):  # what transformers-side readers of the bundle expect
        if (source.path / name).is_file() and not (tmp / name).exists():
            shutil.copy2(source.path / name, tmp / name)
    byte_level_decoding(tmp / "tokenizer.json")  # a HF-folder teacher that transformers converted from GGUF elsewhere
    meta["tokenizer_check"] = tokenizer_check(tmp, source.path, _texts(ctx))
    names = io_names(tmp / "model.onnx")
    genai = read_json(tmp / "genai_config.json")["model"]
    write_json(tmp / "compress.json", {**bundle_info(source.path), "format": "genai", "inputs": names["inputs"],
                                       "outputs": names["outputs"], "precision": "fp32",
                                       "genai_type": genai.get("type"), "max_length": ctx.recipe.data.max_length,
                                       "genai_tokenizer": meta["tokenizer_check"]})
    meta.update(format="genai", external_data="model.onnx.data" if (tmp / "model.onnx.data").is_file() else None)
    meta.update(parity(tmp))


def tokenizer_check(bundle: Path, model_dir: Path, texts: list[str]) -> dict:
    """How many of `texts` onnxruntime-genai's tokenizer (the one an app using the bundle calls) turns into the
    ids transformers' tokenizer of the source model gives."""
    from compress.tasks.causal_lm import load_tokenizer

    reference = load_tokenizer(model_dir)
    got = _genai_ids(bundle, texts)
    if isinstance(got, str):
        return {"match": 0, "of": len(texts), "error": got}
    match = sum(ids == reference(text, add_special_tokens=False)["input_ids"] for ids, text in zip(got, texts))
    return {"match": match, "of": len(texts)}


def _genai_ids(bundle: Path, texts: list[str]) -> list[list[int]] | str:
    """genai's token ids of `texts`, or why there are none. In a child process: onnxruntime-extensions (genai
    0.14.1) reads some tokenizers it does not support into undefined behaviour, e.g. a WordLevel tokenizer.json gave
    an error, wrong ids or a segmentation fault on alternate loads in one process."""
    import json
    import signal

    code = "import sys; from compress.stages.lm_genai import encode_main; sys.exit(encode_main(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(bundle)], input=json.dumps(texts), capture_output=True,
                          text=True, timeout=900, preexec_fn=die_with_parent)
    if proc.returncode < 0:
        return f"onnxruntime-genai's tokenizer crashed reading it ({signal.Signals(-proc.returncode).name})"
    lines = (proc.stdout if proc.returncode == 0 else proc.stderr).strip().splitlines()
    if proc.returncode != 0 or not lines:
        return (lines[-1] if lines else f"exit {proc.returncode}")[:200]
    return json.loads(lines[-1])


def encode_main(bundle: str) -> int:
    """The child of _genai_ids: texts (a JSON list) on stdin, their ids (one JSON line) last on stdout."""
    import json

    import onnxruntime_genai as og

    texts = json.load(sys.stdin)
    try:
        model = og.Model(bundle)  # kept alive while the tokenizer that reads its folder is used
        tokenizer = og.Tokenizer(model)
    except RuntimeError as exc:  # a tokenizer onnxruntime-extensions cannot read
        print(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc), file=sys.stderr)
        return 3
    print(json.dumps([[int(t) for t in tokenizer.encode(text)] for text in texts]))
    return 0


def _texts(ctx, n: int = 20) -> list[str]:
    from compress.stages import lm_text as text

    _, eval_pairs, _ = text.texts(ctx)
    return [(c + t).replace("<EOS>", "")[:400] for c, t in eval_pairs[:n]] or ["Hello, world."]
