"""Device-side example: generate text with an exported causal-lm bundle, using onnxruntime alone.

Needs only `onnxruntime`, `numpy` and `tokenizers` (no torch, no transformers, no compress):

    python generate.py BUNDLE_DIR "The film was" [--max-new-tokens 32] [--chat]

A bundle is what `compress run` writes under runs/<name>/artifacts/<variant>.onnx/ for task causal-lm:
model.onnx with a key/value cache (inputs input_ids, attention_mask, position_ids, past_key_values.<i>.key/value;
outputs logits, present.<i>.key/value), tokenizer.json and compress.json (eos_token_id). Decoding is greedy: the
prompt runs once, then one token per step, each step feeding back the cache the previous one returned.
--chat wraps the prompt in ChatML (<|im_start|>user ... <|im_end|>), the template of SmolLM2 and Qwen models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def generate(bundle: Path, prompt: str, max_new_tokens: int = 32, threads: int = 1) -> list[int]:
    info = json.loads((bundle / "compress.json").read_text())
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # compress.json names the graph (onnx/model.onnx); bundles made before that layout have model.onnx at the root.
    session = ort.InferenceSession(str(bundle / info.get("model", "model.onnx")), options,
                                   providers=["CPUExecutionProvider"])
    cache_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
    outputs = [o.name for o in session.get_outputs()]
    # An empty cache: batch 1, the model's key/value heads, 0 positions so far, the head size.
    cache = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in cache_inputs}
    ids = np.array([tokenizer.encode(prompt, add_special_tokens=False).ids], dtype=np.int64)
    done, new = ids.shape[1], []
    eos = info.get("eos_token_id")
    while len(new) < max_new_tokens:
        feeds = {"input_ids": ids, "attention_mask": np.ones((1, done), np.int64), **cache}
        if "position_ids" in {i.name for i in session.get_inputs()}:
            feeds["position_ids"] = np.arange(done - ids.shape[1], done, dtype=np.int64)[None]
        logits, *present = session.run(None, feeds)
        cache = {name.replace("present", "past_key_values", 1): value for name, value in zip(outputs[1:], present)}
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        new.append(token)
        ids, done = np.array([[token]], dtype=np.int64), done + 1
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in ChatML")
    args = parser.parse_args()
    prompt = CHATML.format(prompt=args.prompt) if args.chat else args.prompt
    tokens = generate(args.bundle, prompt, args.max_new_tokens)
    text = Tokenizer.from_file(str(args.bundle / "tokenizer.json")).decode(tokens)
    print(json.dumps({"tokens": tokens, "text": text}))


if __name__ == "__main__":
    main()
