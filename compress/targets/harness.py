"""Device-side benchmark harness: time one ONNX model with onnxruntime, optionally run eval batches.

This file is copied as is to remote devices (SSH, QEMU): it uses the standard library, numpy and
onnxruntime only, and imports nothing of `compress`.

    python harness.py --model model.onnx --inputs inputs.npz --out result.json \
        [--eval eval.npz --eval-out outputs.npz] --provider CPUExecutionProvider --threads 1 \
        [--inter-threads 1 --graph-opt all --execution-mode sequential --provider-options '{...}'] \
        [--generate 32,128 --decoding greedy,sampled --prompt-tokens 64] --warmup 5 --min-iterations 20 --min-seconds 1.0
    python harness.py --env     # this machine's environment as JSON on stdout

result.json always gets written with a "status": "ok", "unavailable" (the requested execution
provider is missing or onnxruntime fell back to another one: no timing is done, so a CPU number is
never labelled as another provider) or "error" (with the reason).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import sys
import time
import traceback

GRAPH_OPT = ("disable", "basic", "extended", "all")


def time_loop(fn, warmup: int, min_iterations: int, min_seconds: float) -> list[float]:
    """Call `fn()` `warmup` times untimed, then until both minimums are reached; return each call in ms.

    `fn` may be a list of callables (one per pre-built input, e.g. texts at their own lengths): they are
    called in turn, and timing goes on to the end of a whole pass over them, so that every model timed
    this way sees each input equally often. Only the call itself is inside the clock; the garbage
    collector is paused so that a collection triggered by the caller's allocations does not land in a
    sample (as timeit does).
    """
    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    for i in range(warmup):
        fns[i % len(fns)]()
    samples: list[float] = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        while (len(samples) < min_iterations or (time.perf_counter_ns() - start) < min_seconds * 1e9
               or len(samples) % len(fns)):
            call = fns[len(samples) % len(fns)]
            t0 = time.perf_counter_ns()
            call()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        if was_enabled:
            gc.enable()
    return samples


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted list."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summarize(samples_ms: list[float], batch_size: int) -> dict:
    """p50/p90/p99/mean/stdev in ms and throughput in items/s at the median latency."""
    values = sorted(samples_ms)
    n = len(values)
    mean = sum(values) / n if n else math.nan
    stdev = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    latency = {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
               "mean": mean, "stdev": stdev, "min": values[0] if n else math.nan, "n": n}
    p50 = latency["p50"]
    throughput = batch_size * 1000.0 / p50 if p50 and p50 > 0 else math.nan
    return {"latency_ms": latency, "throughput": throughput}


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB (MiB).

    Linux: VmHWM from /proc/self/status. Not ru_maxrss: Linux keeps ru_maxrss across fork + exec, so
    a harness started by a big parent (torch loaded) would report the parent's peak as its own.
    Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return math.nan
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def check_providers(requested: str, used: list[str]) -> str | None:
    """None when `requested` really runs the model, else why not (onnxruntime falls back silently)."""
    if not used:
        return "the session reports no execution provider"
    if used[0] != requested:
        return f"onnxruntime fell back to {used[0]} (session providers: {', '.join(used)})"
    return None


# CPU features that pick onnxruntime's int8/fp16 kernels, as /proc/cpuinfo spells them (x86 "flags", aarch64
# "Features": asimd is NEON, asimddp the dot-product instructions, asimdhp fp16 arithmetic).
X86_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_int8")
ARM_FLAGS = ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")
ORT_PACKAGES = ("onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-qnn",
                "onnxruntime-rocm", "onnxruntime-training", "onnxruntime")


def parse_cpuinfo(text: str) -> tuple[str, set[str], str]:
    """(model name, feature flags, cpu part) of the first processor block of /proc/cpuinfo text (x86 'flags',
    aarch64 'Features'); compress/targets/cpu.py reads it through this function too."""
    model, flags, part = "", set(), ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "cpu part" and not part:
            part = value.strip()
    return model, flags, part


def cpu_environment(cpuinfo: str | None = None, meminfo: str | None = None, machine: str | None = None) -> dict:
    """CPU model, feature flags, cores and memory of this machine (Linux /proc; elsewhere what platform knows)."""
    cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    meminfo = _read("/proc/meminfo") if meminfo is None else meminfo
    model, flags, part = parse_cpuinfo(cpuinfo)
    if not model and part:  # aarch64 Linux names no model: the part number does (0xd08 = Cortex-A72)
        model = {"0xd03": "Cortex-A53", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1",
                 "0xd40": "Neoverse-V1", "0xd4f": "Neoverse-V2", "0xd49": "Neoverse-N2"}.get(part, f"ARM part {part}")
    memory = None
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            memory = round(int(line.split()[1]) / 1024 / 1024, 2)
    arm = (machine or platform.machine()).lower() in ("aarch64", "arm64")
    if arm:
        flags.add("asimd")  # Advanced SIMD (NEON) is mandatory on ARMv8-A
    return {"cpu_model": model or platform.processor() or "unknown", "cores": os.cpu_count(),
            "memory_gb": memory, "cpu_flags": {f: f in flags for f in (ARM_FLAGS if arm else X86_FLAGS)}}


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _os_release() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return platform.platform()


def _ort_package() -> str | None:
    """Which onnxruntime distribution is installed: they share the module name, and differ in providers."""
    from importlib import metadata

    for name in ORT_PACKAGES:
        try:
            metadata.version(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    return None


def environment() -> dict:
    import glob

    import numpy as np
    import onnxruntime as ort

    return {"machine": platform.machine(), "platform": platform.platform(), "os": _os_release(),
            "python": platform.python_version(), "onnxruntime": ort.__version__, "numpy": np.__version__,
            "onnxruntime_package": _ort_package(), "available_providers": list(ort.get_available_providers()),
            "gpu_devices": sorted(glob.glob("/dev/nvidia[0-9]*")) if sys.platform.startswith("linux") else None,
            **cpu_environment()}


EXECUTION_MODES = ("sequential", "parallel")


def make_session(model: str, provider: str, threads: int, graph_opt: str = "all", inter_threads: int = 1,
                 execution_mode: str = "sequential", provider_options: dict | None = None, log_severity: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_severity  # 2 (warnings) is onnxruntime's default; 0 logs node placement
    options.intra_op_num_threads = threads  # 0 = onnxruntime's default (all cores)
    options.inter_op_num_threads = inter_threads  # used by the parallel execution mode only
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel"
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_opt]
    first = (provider, provider_options) if provider_options else provider
    providers = [first] if provider == "CPUExecutionProvider" else [first, "CPUExecutionProvider"]
    if DEVICE_OF.get(provider) == "cuda":
        preload_cuda_libraries(ort)
    return ort.InferenceSession(model, sess_options=options, providers=providers)


def preload_cuda_libraries(ort) -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages (as PyTorch installs them) before a CUDA session.

    onnxruntime-gpu finds them there only when asked to, or when torch was imported first; this worker imports no
    torch, so where CUDA is not on the library path the provider would not load and there would be no CUDA row.
    """
    if not hasattr(ort, "preload_dlls"):  # onnxruntime < 1.21: CUDA must be on the library path
        return
    with contextlib.redirect_stdout(sys.stderr):  # it prints what it could not load; stdout may carry JSON
        try:
            ort.preload_dlls()
        except (OSError, RuntimeError) as exc:
            print(f"onnxruntime.preload_dlls: {exc}", file=sys.stderr)


# onnxruntime's device name for a provider whose tensors live off the host (IO binding binds them there).
DEVICE_OF = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}

# onnxruntime's verbose log lists where each node runs; session.get_providers() does not (it names the providers
# asked for even when some heavy nodes run on the CPU, e.g. ops the GPU provider has no kernel for).
PLACED = re.compile(r"(?:Node\(s\)|All nodes) placed on \[(\w+)\]\. Number of nodes: (\d+)")
PLACED_OP = re.compile(r"VerifyEachNodeIsAssignedToAnEp\]\s{3,}(\w+) \(")
# GPU providers whose placement a throwaway session reads cheaply (TensorRT would build its engine twice).
PLACEMENT_CHECKED = ("CUDAExecutionProvider", "DmlExecutionProvider")
# Ops onnxruntime keeps on the CPU on purpose (shape arithmetic): not worth a note when they do.
SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Reshape", "Cast", "Range", "Size",
             "ConstantOfShape", "Equal", "Where", "Expand", "Constant", "MemcpyToHost", "MemcpyFromHost"}


def parse_placement(log: str) -> dict:
    """{"nodes": {provider: count}, "cpu_ops": {op type: count of compute nodes on the CPU}} from the log."""
    nodes, cpu_ops, current = {}, {}, None
    for line in log.splitlines():
        placed = PLACED.search(line)
        if placed:
            current = placed.group(1)
            nodes[current] = int(placed.group(2))
            continue
        op = PLACED_OP.search(line)
        if op and current == "CPUExecutionProvider" and op.group(1) not in SHAPE_OPS:
            cpu_ops[op.group(1)] = cpu_ops.get(op.group(1), 0) + 1
    return {"nodes": nodes, "cpu_ops": cpu_ops}


def node_placement(model: str, provider: str, provider_options: dict | None = None, graph_opt: str = "all") -> dict:
    """Where onnxruntime places each node of `model` under `provider`: a throwaway session with the verbose log,
    its stderr captured at the file descriptor (the log is written by onnxruntime's C++ side)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            make_session(model, provider, 1, graph_opt, provider_options=provider_options, log_severity=0)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        return parse_placement(log.read().decode("utf-8", "replace"))


def placement_reason(requested: str, placement: dict) -> str | None:
    """Why the numbers are not `requested`'s at all (every node on another provider), else None."""
    nodes = placement.get("nodes") or {}
    if nodes and not nodes.get(requested):
        return f"onnxruntime placed every node on {', '.join(nodes)} (none on {requested})"
    return None


def run_once(session, feeds: dict, provider: str, io_binding: str = "auto", device_id: int = 0):
    """A no-argument callable that runs the model once, and whether it uses IO binding.

    With IO binding the inputs are copied to the provider's device once, before timing, and the outputs
    stay there: a GPU number then measures the model, not host-device copies of every call.
    """
    device = DEVICE_OF.get(provider, "cpu")
    if io_binding == "off" or (io_binding == "auto" and device == "cpu"):
        return (lambda: session.run(None, feeds)), False
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, device_id))
    for output in session.get_outputs():
        binding.bind_output(output.name, device, device_id)

    def bound():
        session.run_with_iobinding(binding)
        return binding  # outputs stay on the device; binding.copy_outputs_to_cpu() reads them

    return bound, True


def feeds_for(session, arrays: dict, prefix: str = "") -> dict:
    """The arrays the session declares as inputs (extra keys such as token_type_ids are ignored)."""
    feeds = {}
    for spec in session.get_inputs():
        key = prefix + spec.name
        if key not in arrays:
            raise KeyError(f"input {spec.name!r} missing from the inputs file (have: {sorted(arrays)})")
        feeds[spec.name] = arrays[key]
    return feeds


def real_groups(arrays: dict) -> list[dict]:
    """Inputs at the data's real lengths: npz keys g0_input_ids, g0_attention_mask, g1_... (one group per call,
    each as long as its longest text) -> per-group dicts, in order; [] for a fixed-length inputs file."""
    grouped: dict[int, dict] = {}
    for key, value in arrays.items():
        head, _, name = key.partition("_")
        if head[:1] == "g" and head[1:].isdigit() and name:
            grouped.setdefault(int(head[1:]), {})[name] = value
    return [grouped[i] for i in sorted(grouped)]


def real_lengths(groups: list[dict]) -> dict:
    """Token counts of real-length groups: per text (from the attention mask) and per call (padded); None for
    inputs without one (images are all one size)."""
    texts, calls = [], []
    for group in groups:
        mask = group.get("attention_mask")
        if mask is not None:
            calls.append(int(mask.shape[1]))
            texts += [int(n) for n in mask.sum(axis=1)]
    ordered = sorted(texts)
    return {"groups": len(groups), "texts": len(texts), "median": percentile(ordered, 50) if ordered else None,
            "min": ordered[0] if ordered else None, "max": ordered[-1] if ordered else None,
            "padded_median": percentile(sorted(calls), 50) if calls else None}


def eval_batches(path: str) -> list[dict]:
    """Split eval.npz keys like b0_input_ids, b0_attention_mask into per-batch dicts, in order."""
    import numpy as np

    with np.load(path) as data:
        grouped: dict[int, dict] = {}
        for key in data.files:
            head, _, name = key.partition("_")
            grouped.setdefault(int(head[1:]), {})[name] = data[key]
    return [grouped[i] for i in sorted(grouped)]


def run_eval(session, eval_path: str, out_path: str) -> dict:
    import numpy as np

    outputs = {}
    # The first output only: every task's result comes first (a sentence-embedding bundle's last_hidden_state,
    # [batch, sequence, hidden], after it would be hundreds of MB over an eval set, and quality never reads it).
    names = [o.name for o in session.get_outputs()][:1]
    start = time.perf_counter()
    for index, batch in enumerate(eval_batches(eval_path)):
        for name, value in zip(names, session.run(names, feeds_for(session, batch))):
            outputs[f"b{index}_{name}"] = value
    np.savez(out_path, **outputs)
    return {"eval_batches": len({k.split("_", 1)[0] for k in outputs}), "eval_seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- causal language models (past key/values)


class LMSession:
    """A decoder exported with past key/values (optimum's layout): prefill a prompt, then one token a step."""

    def __init__(self, session):
        import numpy as np

        self.session = session
        inputs = session.get_inputs()
        self.names = {i.name for i in inputs}
        self.past = [(i.name, i.shape) for i in inputs if i.name.startswith("past_key_values")]
        bad = [name for name, shape in self.past if not (isinstance(shape[1], int) and isinstance(shape[3], int))]
        if bad:
            raise ValueError(f"{bad[0]}: the heads and head size of the cache must be fixed in the model")
        kinds = {i.name: i.type for i in inputs}
        self.dtype = np.float16 if any("float16" in kinds[n] for n, _ in self.past) else np.float32
        self.outputs = [o.name for o in session.get_outputs()]

    def empty_past(self, batch: int) -> dict:
        import numpy as np

        return {name: np.zeros((batch, shape[1], 0, shape[3]), self.dtype) for name, shape in self.past}

    def run(self, ids, mask, positions, past: dict):
        feeds = {"input_ids": ids, "attention_mask": mask, **past}
        if "position_ids" in self.names:
            feeds["position_ids"] = positions
        out = self.session.run(None, feeds)
        present = {name.replace("present", "past_key_values", 1): value
                   for name, value in zip(self.outputs[1:], out[1:])}
        return out[0], present

    def prefill(self, ids, mask=None):
        import numpy as np

        mask = np.ones(ids.shape, np.int64) if mask is None else mask
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
        return self.run(ids, mask, positions, self.empty_past(ids.shape[0]))

    def step(self, tokens, past: dict, past_len: int):
        import numpy as np

        batch = tokens.shape[0]
        mask = np.ones((batch, past_len + 1), np.int64)
        positions = np.full((batch, 1), past_len, np.int64)
        return self.run(tokens, mask, positions, past)

    def generate(self, ids, new_tokens: int, pick=None) -> tuple[float, float, list[int]]:
        """Generation of exactly `new_tokens` (no early stop: a fixed amount of work to time); `pick` maps the
        last position's logits (batch, vocab) to the next tokens (batch, 1), greedy when None.
        Returns (seconds to the first token, seconds of the other tokens, the tokens of row 0)."""
        pick = pick or greedy
        start = time.perf_counter()
        logits, past = self.prefill(ids)
        token = pick(logits[:, -1])
        first = time.perf_counter()  # the first token is known: prefill and its pick
        tokens, length = [int(token[0, 0])], ids.shape[1]
        for _ in range(new_tokens - 1):
            logits, past = self.step(token, past, length)
            length += 1
            token = pick(logits[:, -1])
            tokens.append(int(token[0, 0]))
        return first - start, time.perf_counter() - first, tokens


def genai_folder(model: str) -> str | None:
    """The folder holding genai_config.json for the graph `model` (onnxruntime-genai's format), else None."""
    here = os.path.dirname(os.path.abspath(model))
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "genai_config.json")):
            return folder
    return None


class GenaiLM:
    """A bundle in onnxruntime-genai's format through onnxruntime-genai's own Generator, as an app using it
    generates (its key/value buffer shared between steps, its own sampling). Same interface as LMSession.generate;
    a Sampler's settings become genai's search options. EOS is held back until the last token (min_length), so a
    run always does exactly `new_tokens` of work."""

    def __init__(self, folder: str, provider: str, threads: int):
        import onnxruntime_genai as og

        config = og.Config(folder)
        config.clear_providers()
        if provider == "CUDAExecutionProvider":
            config.append_provider("cuda")
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1} if threads else {}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.og, self.model = og, og.Model(config)
        with open(os.path.join(folder, "genai_config.json"), encoding="utf-8") as handle:
            self.vocab = int(json.load(handle)["model"]["vocab_size"])

    def generate(self, ids, new_tokens: int, pick=None) -> tuple[float, float, list[int]]:
        import numpy as np

        length = int(ids.shape[1]) + new_tokens
        search = {"max_length": length, "min_length": length, "batch_size": int(ids.shape[0]), "do_sample": False}
        if isinstance(pick, Sampler):
            # top_k beyond the vocabulary aborts genai 0.14 (an assertion, not an error)
            search.update(do_sample=True, temperature=pick.temperature, top_k=min(pick.top_k, self.vocab), top_p=pick.top_p,
                          random_seed=pick.seed)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(**search)
        generator = self.og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(np.ascontiguousarray(ids, np.int32))
        generator.generate_next_token()  # picks from the prompt's logits
        first = time.perf_counter()
        tokens = [int(generator.get_next_tokens()[0])]
        for _ in range(new_tokens - 1):
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return first - start, time.perf_counter() - first, tokens


def greedy(logits):
    return logits.argmax(-1)[:, None].astype("int64")


class Sampler:
    """Sampled decoding as edge runtimes do it (llama.cpp's and onnxruntime-genai's defaults): temperature,
    then the top_k most likely tokens, then the smallest set of those whose probability reaches top_p.
    `reset()` restarts the seeded generator: every timed run samples the same tokens, so runs are comparable."""

    def __init__(self, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int = 0):
        self.temperature, self.top_k, self.top_p, self.seed = temperature, top_k, top_p, seed
        self.reset()

    def reset(self) -> None:
        import numpy as np

        self.rng = np.random.default_rng(self.seed)

    def __call__(self, logits):
        import numpy as np

        logits = logits.astype(np.float32) / max(self.temperature, 1e-6)
        k = min(self.top_k, logits.shape[-1])
        top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]  # O(vocab): no full sort per token
        out = np.empty((logits.shape[0], 1), np.int64)
        for row, candidates in enumerate(top):
            values = logits[row, candidates]
            order = np.argsort(-values)
            candidates, values = candidates[order], values[order]
            probs = np.exp(values - values[0])
            probs /= probs.sum()
            # the first index whose cumulative probability reaches top_p (rounding: at most all of them)
            keep = min(int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1, len(probs))
            probs = probs[:keep] / probs[:keep].sum()
            out[row, 0] = candidates[self.rng.choice(keep, p=probs)]
        return out


def time_generation(lm: LMSession, ids, new_tokens: int, warmup: int, min_iterations: int, min_seconds: float,
                    sampler: Sampler | None = None):
    """Per iteration: time to first token (ms) and decode time per token (ms); at least 1 warm-up.
    Returns (ttft, per_token, the tokens of the last run)."""
    for _ in range(max(1, warmup)):
        lm.generate(ids, min(new_tokens, 4), sampler)
    ttft, per_token, tokens, started = [], [], [], time.perf_counter()
    while len(ttft) < min_iterations or time.perf_counter() - started < min_seconds:
        if sampler is not None:
            sampler.reset()
        first, rest, tokens = lm.generate(ids, new_tokens, sampler)
        ttft.append(first * 1000)
        per_token.append(rest * 1000 / max(new_tokens - 1, 1))
    return ttft, per_token, tokens


def next_token_stats(logits, ids):
    """(argmax, nll) per position, shifted so that index t is about token t (predicted from tokens < t)."""
    import numpy as np

    logits = logits.astype(np.float32)
    top = logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    argmax = np.zeros(ids.shape, np.int64)
    nll = np.zeros(ids.shape, np.float32)
    argmax[:, 1:] = logits[:, :-1].argmax(-1)
    picked = np.take_along_axis(logits[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    nll[:, 1:] = logz[:, :-1] - picked
    return argmax, nll


def run_eval_lm(session, eval_path: str, out_path: str) -> dict:
    """Next-token argmax and NLL per eval batch (b<i>_argmax, b<i>_nll): the logits themselves are too big."""
    import numpy as np

    lm, outputs, start = LMSession(session), {}, time.perf_counter()
    for index, batch in enumerate(eval_batches(eval_path)):
        logits, _ = lm.prefill(batch["input_ids"], batch["attention_mask"])
        outputs[f"b{index}_argmax"], outputs[f"b{index}_nll"] = next_token_stats(logits, batch["input_ids"])
    np.savez(out_path, **outputs)
    return {"eval_batches": len(outputs) // 2, "eval_seconds": time.perf_counter() - start}


def generation_modes(args) -> list[tuple[str, int]]:
    """(decoding, new tokens) pairs to time, the row's own (the first decoding, --generate's first count) first."""
    decodings = [d.strip() for d in args.decoding.split(",") if d.strip()]
    return [(d, n) for d in decodings for n in args.generate]


def bench_generation(args, lm, result: dict, arrays: dict) -> dict:
    """`lm`: an LMSession (onnxruntime) or a GenaiLM (onnxruntime-genai)."""
    ids = arrays["input_ids"][:, : args.prompt_tokens or None].astype("int64")
    modes = []
    for decoding, new_tokens in generation_modes(args):
        sampler = Sampler(**(args.sampling or {})) if decoding == "sampled" else None
        ttft, per_token, tokens = time_generation(lm, ids, new_tokens, args.warmup, args.min_iterations,
                                                  args.min_seconds, sampler)
        per = summarize(per_token, int(ids.shape[0]))
        modes.append({"decoding": decoding, "new_tokens": new_tokens, "ttft_ms": summarize(ttft, 1)["latency_ms"],
                      "ms_per_token": per["latency_ms"], "tokens_per_s": per["throughput"],
                      "ttft_samples_ms": ttft, "samples_ms": per_token, "tokens": tokens[:16]})
    first = modes[0]  # the row's own numbers
    result["batch_size"], result["seq_len"], result["new_tokens"] = int(ids.shape[0]), int(ids.shape[1]), first["new_tokens"]
    result["decoding"] = first["decoding"]
    result.update(summarize(first["samples_ms"], result["batch_size"]))  # latency = ms per generated token
    result["samples_ms"] = first["samples_ms"]
    result["ttft_samples_ms"] = first["ttft_samples_ms"]
    result["ttft_ms"] = first["ttft_ms"]
    result["tokens_per_s"] = 1000.0 * result["batch_size"] / result["latency_ms"]["p50"]
    result["generation"] = modes
    result["io_binding"] = False
    return result


def bench(args) -> dict:
    import numpy as np

    result = {"status": "ok", "reason": None, "provider": args.provider, "threads": args.threads,
              "inter_threads": args.inter_threads, "graph_opt": args.graph_opt,
              "execution_mode": args.execution_mode, **environment()}
    if args.provider not in result["available_providers"]:
        return {**result, "status": "unavailable", "providers_used": [],
                "reason": f"{args.provider} is not in this onnxruntime's available providers "
                          f"({', '.join(result['available_providers'])})"}
    with np.load(args.inputs) as data:
        arrays = {k: data[k] for k in data.files}
    folder = genai_folder(args.model) if args.generate else None
    if folder:
        return _bench_genai(args, folder, result, arrays)
    t0 = time.perf_counter()
    session = make_session(args.model, args.provider, args.threads, args.graph_opt, args.inter_threads,
                           args.execution_mode, args.provider_options)
    result["session_seconds"] = time.perf_counter() - t0
    result["providers_used"] = session.get_providers()
    reason = check_providers(args.provider, result["providers_used"])
    if not reason and args.provider in PLACEMENT_CHECKED:
        result["placement"] = node_placement(args.model, args.provider, args.provider_options, args.graph_opt)
        reason = placement_reason(args.provider, result["placement"])
    if reason:
        return {**result, "status": "unavailable", "reason": reason}
    result["runtime"] = "onnxruntime"
    if args.generate:
        result = bench_generation(args, LMSession(session), result, arrays)
    else:
        result = _bench_forward(args, session, result, arrays)
    result["peak_rss_mb"] = peak_rss_mb()  # before eval, whose batches would add to it
    del session  # quality is not timed: let the eval use every core
    gc.collect()
    return _evaluate(args, result)


def _evaluate(args, result: dict) -> dict:
    if args.eval:
        eval_session = make_session(args.model, args.provider, 0, args.graph_opt, args.inter_threads,
                                    args.execution_mode, args.provider_options)
        evaluate = run_eval_lm if args.generate else run_eval
        result.update(evaluate(eval_session, args.eval, args.eval_out))
    return result


GENAI_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")


def _bench_genai(args, folder: str, result: dict, arrays: dict) -> dict:
    """Generation through onnxruntime-genai (the bundle has genai_config.json); scoring (--eval) through
    onnxruntime on the same graph, whose logits are what genai picks from."""
    result["runtime"] = "onnxruntime-genai"
    if args.provider not in GENAI_PROVIDERS:
        return {**result, "status": "unavailable", "providers_used": [],
                "reason": f"this harness runs onnxruntime-genai on {' and '.join(GENAI_PROVIDERS)} only"}
    try:
        import onnxruntime_genai
    except ImportError:
        return {**result, "status": "unavailable", "providers_used": [],
                "reason": "the bundle is in onnxruntime-genai's format and onnxruntime-genai is not installed here "
                          "(pip install onnxruntime-genai)"}
    t0 = time.perf_counter()
    lm = GenaiLM(folder, args.provider, args.threads)
    result["session_seconds"] = time.perf_counter() - t0
    result["providers_used"] = [args.provider]  # genai has no placement report: the provider its config names
    result["genai_version"] = onnxruntime_genai.__version__
    result = bench_generation(args, lm, result, arrays)
    result["peak_rss_mb"] = peak_rss_mb()
    del lm
    gc.collect()
    return _evaluate(args, result)


def _bench_forward(args, session, result: dict, arrays: dict) -> dict:
    groups = real_groups(arrays)
    device_id = int((args.provider_options or {}).get("device_id", 0))
    if groups:  # the data's real lengths: one pre-built input per call, cycled through in the timed loop
        calls = [run_once(session, feeds_for(session, g), args.provider, args.io_binding, device_id) for g in groups]
        once, result["io_binding"] = [c for c, _ in calls], calls[0][1]
        result["batch_size"], result["seq_len"] = int(next(iter(groups[0].values())).shape[0]), "data"
        result["real_lengths"] = real_lengths(groups)
    else:
        feeds = feeds_for(session, arrays)  # built once: building inputs inside the loop skews small models
        result["batch_size"], result["seq_len"] = (int(d) for d in next(iter(feeds.values())).shape[:2])
        once, result["io_binding"] = run_once(session, feeds, args.provider, args.io_binding, device_id)
    samples = time_loop(once, args.warmup, args.min_iterations, args.min_seconds)
    result.update(summarize(samples, result["batch_size"]))
    result["samples_ms"] = samples
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="store_true", help="print this machine's environment as JSON and exit")
    parser.add_argument("--model")
    parser.add_argument("--inputs", help="npz with one array per model input (pre-built); or groups g0_<input>, "
                        "g1_<input>, ... timed in turn (texts at their own lengths)")
    parser.add_argument("--out", help="result.json to write")
    parser.add_argument("--eval", help="npz of eval batches: b0_input_ids, b0_attention_mask, ...")
    parser.add_argument("--eval-out", help="npz to write the eval outputs to (b0_<output name>, ...)")
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = onnxruntime default)")
    parser.add_argument("--inter-threads", type=int, default=1, help="inter-op threads (parallel mode)")
    parser.add_argument("--graph-opt", choices=GRAPH_OPT, default="all")
    parser.add_argument("--execution-mode", choices=EXECUTION_MODES, default="sequential")
    parser.add_argument("--provider-options", type=json.loads, default=None, help="JSON object of provider options")
    parser.add_argument("--io-binding", choices=("auto", "on", "off"), default="auto",
                        help="bind inputs/outputs on the provider's device (auto: GPU providers only)")
    parser.add_argument("--generate", default="0",
                        help="a causal LM with past key/values: time generation of this many tokens (time to first "
                             "token, ms per token; a comma list times each, the first is the row's); eval writes "
                             "next-token argmax and NLL")
    parser.add_argument("--decoding", default="greedy", help="with --generate: greedy, sampled, or both (comma list)")
    parser.add_argument("--sampling", type=json.loads, default=None,
                        help='with --decoding sampled: JSON {"temperature", "top_k", "top_p", "seed"}')
    parser.add_argument("--prompt-tokens", type=int, default=0, help="with --generate: prompt length (0: all)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--min-iterations", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        args.generate = [n for n in (int(v) for v in str(args.generate).split(",") if v.strip()) if n > 0]
    except ValueError:
        parser.error(f"--generate {args.generate}: a number of tokens, or a comma list of them")
    if any(d.strip() not in ("greedy", "sampled") for d in args.decoding.split(",")):
        parser.error(f"--decoding {args.decoding}: greedy, sampled, or both (comma list)")
    if not args.env and not (args.model and args.inputs and args.out):
        parser.error("--model, --inputs and --out are required (unless --env)")
    if args.eval and not args.eval_out:
        parser.error("--eval needs --eval-out")
    return args


def clean(value):
    """NaN and inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.env:
        json.dump(clean(environment()), sys.stdout)
        return 0
    try:
        result = bench(args)
    except Exception as exc:  # noqa: BLE001 - the caller reads result.json; the traceback goes to stderr
        traceback.print_exc()
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}", "provider": args.provider}
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(clean(result), handle, indent=1)
    os.replace(tmp, args.out)
    return 1 if result["status"] == "error" else 0


if __name__ == "__main__":
    sys.exit(main())
