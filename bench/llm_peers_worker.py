"""One measurement of `python -m bench llm-peers`, in its own process (its peak RSS is the model's own).

    python bench/llm_peers_worker.py spec.json     # writes spec["out"]

spec: {"runtime": "onnx" | "llama.cpp" | "genai", "model": file or folder, "threads": 1,
       "prompts": npz (p64, p256, ...: one row of token ids each), "new_tokens": [32, 128], "iterations": 2,
       "warmup": 1, "score": [[npz of token-id sequences (s0, s1, ...), npz to write], ...], "check": json of
       [{text, ids}] (does the runtime's tokenizer give the teacher tokenizer's ids?), "out": result.json}.
Generation is greedy, exactly new_tokens (no early stop), batch 1. Time to first token = the prompt's forward
pass and the first token's pick; ms per token = the rest over new_tokens - 1. Scoring writes, per sequence, the
argmax and the negative log-likelihood of each next token (position t: token t predicted from tokens < t).
Runs under bench/.venv-llm's python for the peers, imports only numpy, the runtime, and compress's harness.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from compress.targets import harness  # noqa: E402 - standard library + numpy + onnxruntime only


class OnnxLM:
    """compress's bundle through onnxruntime, as the causal-lm bench times it (harness.LMSession)."""

    def __init__(self, model: str, threads: int):
        folder = model if os.path.isdir(model) else os.path.dirname(model)
        path = next(p for p in (os.path.join(folder, "onnx", "model.onnx"), os.path.join(folder, "model.onnx"))
                    if os.path.isfile(p))
        self.lm = harness.LMSession(harness.make_session(path, "CPUExecutionProvider", threads))

    def generate(self, ids: list[int], new_tokens: int):
        return self.lm.generate(np.asarray([ids], np.int64), new_tokens)

    def logits(self, ids: list[int]):
        return self.lm.prefill(np.asarray([ids], np.int64))[0][0]


class LlamaLM:
    """A GGUF file through llama-cpp-python (llama.cpp's own CPU kernels)."""

    def __init__(self, model: str, threads: int, logits_all: bool = False):
        import llama_cpp
        from llama_cpp import Llama

        self.lib = llama_cpp
        self.llm = Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                         logits_all=logits_all, verbose=False)

    def _last(self) -> int:
        """The greedy token from the last position's logits (Llama.scores keeps them only with logits_all)."""
        logits = self.lib.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),))))

    def generate(self, ids: list[int], new_tokens: int):
        llm = self.llm
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        token = self._last()
        first = time.perf_counter()
        tokens = [token]
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = self._last()
            tokens.append(token)
        return first - start, time.perf_counter() - first, tokens

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def logits(self, ids: list[int]):
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], np.float32)


class GenaiLM:
    """onnxruntime-genai's model (its model builder's folder) through its own Generator."""

    def __init__(self, model: str, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(model)
        config.clear_providers()
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)

    def _generator(self, length: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=length, do_sample=False, batch_size=1)
        return self.og.Generator(self.model, params)

    def generate(self, ids: list[int], new_tokens: int):
        generator = self._generator(len(ids) + new_tokens)
        start = time.perf_counter()
        generator.append_tokens(np.asarray([ids], np.int32))
        generator.generate_next_token()  # picks from the prompt's logits
        first = time.perf_counter()
        tokens = [int(generator.get_next_tokens()[0])]
        for _ in range(new_tokens - 1):
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return first - start, time.perf_counter() - first, tokens

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.og.Tokenizer(self.model).encode(text)]

    def logits(self, ids: list[int]):
        generator = self._generator(len(ids) + 1)
        generator.append_tokens(np.asarray([ids], np.int32))
        logits = np.asarray(generator.get_output("logits"), np.float32)
        if logits.shape[-2] != len(ids):
            raise RuntimeError(f"genai returned logits for {logits.shape[-2]} of {len(ids)} positions")
        return logits.reshape(len(ids), -1)


def load(spec: dict, scoring: bool = False):
    runtime, threads = spec["runtime"], spec["threads"]
    if runtime == "llama.cpp":
        return LlamaLM(spec["model"], threads, logits_all=scoring)
    return {"onnx": OnnxLM, "genai": GenaiLM}[runtime](spec["model"], threads)


def time_generation(lm, ids: list[int], new_tokens: int, iterations: int, warmup: int) -> dict:
    for _ in range(max(1, warmup)):
        lm.generate(ids, min(new_tokens, 4))
    ttft, per_token, tokens = [], [], []
    for _ in range(iterations):
        first, rest, tokens = lm.generate(ids, new_tokens)
        ttft.append(first * 1000)
        per_token.append(rest * 1000 / max(new_tokens - 1, 1))
    return {"new_tokens": new_tokens, "ttft_samples_ms": ttft, "samples_ms": per_token, "tokens": tokens[:16]}


def score(lm, path: str) -> dict:
    """{s<i>_argmax, s<i>_nll} per sequence of the npz."""
    out = {}
    with np.load(path) as data:
        for name in sorted(data.files, key=lambda n: int(n[1:])):
            ids = data[name].astype(np.int64)
            argmax, nll = harness.next_token_stats(lm.logits(ids.tolist())[None], ids[None])
            out[f"{name}_argmax"], out[f"{name}_nll"] = argmax[0], nll[0]
    return out


def check_tokenizer(lm, path: str) -> dict:
    """How many texts the runtime's own tokenizer turns into the teacher tokenizer's ids."""
    cases = json.loads(open(path, encoding="utf-8").read())
    match = sum(lm.tokenize(case["text"]) == case["ids"] for case in cases)
    return {"match": match, "of": len(cases)}


def run(spec: dict) -> dict:
    result = {"status": "ok", "runtime": spec["runtime"], "threads": spec["threads"]}
    started = time.perf_counter()
    lm = load(spec, scoring=bool(spec.get("score")))
    result["load_seconds"] = time.perf_counter() - started
    for source, dest in spec.get("score") or []:
        arrays = score(lm, source)
        np.savez(dest, **arrays)
        result.setdefault("scored", []).append(len(arrays) // 2)
    if spec.get("check"):
        result["tokenizer"] = check_tokenizer(lm, spec["check"])
    if spec.get("prompts"):
        with np.load(spec["prompts"]) as data:
            prompts = {name: data[name].astype(np.int64).tolist() for name in data.files}
        result["cells"] = [{"prompt": name, "prompt_tokens": len(ids),
                            **time_generation(lm, ids, n, spec["iterations"], spec["warmup"])}
                           for name, ids in prompts.items() for n in spec["new_tokens"]]
    result["peak_rss_mb"] = harness.peak_rss_mb()
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0], encoding="utf-8").read())
    try:
        result = run(spec)
    except Exception as exc:  # noqa: BLE001 - the parent reads the reason from result.json
        import traceback

        traceback.print_exc()
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:600]}
    tmp = spec["out"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(harness.clean(result), handle)
    os.replace(tmp, spec["out"])
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
