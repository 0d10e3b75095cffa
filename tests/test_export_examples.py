"""The device-side examples in export/ load a bundle with onnxruntime alone and match torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from compress import runner
from compress.recipe import parse_recipe

ROOT = Path(__file__).parent.parent
TEXTS = ["a quiet, moving film", "the plot makes no sense at all", "great cast"]


def test_embed_example_matches_torch(tmp_path, tiny_bert, tiny_texts):
    import torch

    from compress.tasks import sentence_embedding
    from compress.tasks.common import load_tokenizer, tokenize

    recipe = parse_recipe(
        f"version: 1\nname: t\ntask: sentence-embedding\nteacher: {{source: {tiny_bert}}}\n"
        f"data: {{source: {tiny_texts}, eval_size: 10}}\nstages:\n  - kind: export\n    parity_texts: 4\n"
    )
    runner.run(recipe, tmp_path / "run", console=Console(quiet=True))
    bundle = tmp_path / "run" / "artifacts" / "teacher.onnx"

    # Run the example as a user's app would: a separate process that imports neither torch nor compress.
    example = str(ROOT / "export" / "embed.py")
    code = (
        "import sys, runpy; sys.argv = ['embed.py', *sys.argv[1:]]\n"
        f"runpy.run_path({example!r}, run_name='__main__')\n"
        "assert 'torch' not in sys.modules and 'compress' not in sys.modules, 'example imported too much'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(bundle), *TEXTS], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = np.array(json.loads(proc.stdout.splitlines()[0])["cosine_matrix"])

    model = sentence_embedding.load_model(tiny_bert)
    inputs = tokenize(load_tokenizer(tiny_bert), TEXTS, 128)
    with torch.no_grad():
        ref = model(torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])).numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(got, np.round(ref @ ref.T, 4), atol=2e-4)


def test_export_of_a_classifier_without_head_weights_passes_parity(tmp_path, tiny_bert, tiny_texts):
    """An encoder not yet fine-tuned gets a random head; it must be the same head in the parity check's fresh
    process (it was not: seeded now), so that exporting it is not refused as an export error."""
    recipe = parse_recipe(f"""
version: 1
name: head
task: text-classification
teacher: {{source: {tiny_bert}}}
data: {{source: {tiny_texts}, label_field: category, eval_size: 20}}
stages:
  - {{kind: export}}
""")
    manifest = runner.run(recipe, tmp_path / "run", console=Console(quiet=True))
    assert manifest["stages"]["export"]["metrics"]["teacher.onnx"]["parity_max_abs"] < 1e-3
