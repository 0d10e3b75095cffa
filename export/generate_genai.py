"""Device-side example: generate text with a bundle in onnxruntime-genai's format, using onnxruntime-genai alone.

Needs only `onnxruntime-genai` (and the onnxruntime it installs; no torch, no transformers, no compress):

    python generate_genai.py BUNDLE_DIR "The film was" [--max-new-tokens 32] [--chat] [--threads 1]

A bundle is what `compress run` writes for task causal-lm with `export: {genai: true}`, under
runs/<name>/artifacts/<model>.genai[.int4-weight].onnx/: genai_config.json (which names the graph,
onnx/model.onnx), the graph with its key/value cache, and tokenizer.json. onnxruntime-genai does the whole
loop: its tokenizer, the prompt's forward pass, then one token a step over a key/value buffer it keeps between
steps. Decoding is greedy and stops at the end-of-sequence token, as export/generate.py does with onnxruntime.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnxruntime_genai as og

CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def generate(bundle: Path, prompt: str, max_new_tokens: int = 32, threads: int = 1) -> tuple[list[int], str]:
    """The greedy continuation of `prompt`: its token ids and its text."""
    config = og.Config(str(bundle))
    config.clear_providers()  # the CPU
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    ids = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    new: list[int] = []
    while not generator.is_done() and len(new) < max_new_tokens:
        generator.generate_next_token()
        new.append(int(generator.get_next_tokens()[0]))
    eos = json.loads((bundle / "genai_config.json").read_text())["model"].get("eos_token_id")
    eos = set(eos) if isinstance(eos, list) else {eos}
    new = new[:-1] if new and new[-1] in eos else new  # the end-of-sequence token is not text
    return new, tokenizer.decode(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in ChatML")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    prompt = CHATML.format(prompt=args.prompt) if args.chat else args.prompt
    tokens, text = generate(args.bundle, prompt, args.max_new_tokens, args.threads)
    print(json.dumps({"tokens": tokens, "text": text}))


if __name__ == "__main__":
    main()
