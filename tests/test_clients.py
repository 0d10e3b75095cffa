"""Real clients load a freshly made bundle as is: README.md's "Deploy" snippets, run on every variant.

Each client's snippet is taken from the README (so the README cannot drift from what works), pointed at one variant
folder of a tiny run, and its embeddings are compared with the same bundle through plain onnxruntime
(export/embed.py, which follows compress.json): within 1e-4 cosine for fp32, and for a quantized variant within the
quality its row reports (the quantize stage's cosine to fp32), so a client adds no error of its own.
A client that is not installed is a skipped test with the reason, never a pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_bert, make_tiny_texts
from rich.console import Console

from compress import runner
from compress.recipe import parse_recipe

ROOT = Path(__file__).resolve().parent.parent
README_PATH = "runs/quickstart/artifacts/student.int8-dynamic.onnx"
TEXTS = ["a quiet, moving film", "great cast"]
SCHEMES = ["int8-dynamic", "int8-static", "int4-weight", "fp16"]
VARIANTS = ["teacher.onnx", *(f"teacher.{scheme}.onnx" for scheme in SCHEMES)]
FP32_TOLERANCE = 1e-4  # 1 - cosine
# client -> (a line of its snippet in README.md, language, what must be installed for it)
CLIENTS = {
    "sentence-transformers": ("from sentence_transformers import SentenceTransformer", "python",
                              ["sentence_transformers"]),
    "optimum": ("from optimum.onnxruntime import ORTModelForFeatureExtraction", "python", ["optimum.onnxruntime"]),
    "transformers.js": ("import { pipeline } from '@huggingface/transformers';", "js", ["@huggingface/transformers"]),
    # export/embed.mjs: onnxruntime-web runs the model, transformers.js's tokenizer reads tokenizer.json
    "onnxruntime-web": ("import { embed } from './embed.mjs';", "js", ["onnxruntime-web", "@huggingface/transformers"]),
}


def readme_snippet(client: str) -> str:
    """The code block of README.md's Deploy section that contains the client's marker line."""
    section = ROOT.joinpath("README.md").read_text().split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    marker = CLIENTS[client][0]
    blocks = [b for b in re.findall(r"```(?:python|js)\n(.*?)```", section, re.S) if marker in b]
    assert len(blocks) == 1, f"README.md's Deploy section has {len(blocks)} snippets with {marker!r}, not 1"
    snippet = blocks[0]
    assert README_PATH in snippet and all(t in snippet for t in TEXTS), (
        f"README.md's {client} snippet no longer embeds {TEXTS} from {README_PATH}: update this test with it")
    return snippet


def install_reason(client: str) -> str | None:
    """Why the client cannot run here (None when it can)."""
    _, language, packages = CLIENTS[client]
    for package in packages:
        if language == "python":
            try:
                found = importlib.util.find_spec(package) is not None
            except ImportError as exc:
                return f"{package} does not import ({exc}); bash install.sh --test installs it"
            if not found:
                return f"{package} is not installed; bash install.sh --test installs it"
        elif shutil.which("node") is None:
            return "node is not installed (apt-get install nodejs npm), so the JavaScript clients cannot run"
        elif not (Path(os.environ["NODE_PATH"]) / package / "package.json").exists():
            return f"npm package {package} is not in {os.environ['NODE_PATH']}; bash install.sh --test installs it"
    return None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny run shared by every client: export, then each quantization the quickstart ships."""
    base = tmp_path_factory.mktemp("clients")
    model, texts = make_tiny_bert(base / "bert"), make_tiny_texts(base / "texts.csv")
    recipe = parse_recipe(
        f"version: 1\nname: quickstart\ntask: sentence-embedding\nteacher: {{source: {model}, license: apache-2.0}}\n"
        f"data: {{source: {texts}, eval_size: 16}}\nstages:\n  - {{kind: export, parity_texts: 4}}\n"
        f"  - {{kind: quantize, schemes: [{', '.join(SCHEMES)}]}}\n"
    )
    manifest = runner.run(recipe, base / "runs" / "quickstart", console=Console(quiet=True))
    quality = {name: m["check"]["cosine"] for name, m in manifest["stages"]["quantize"]["metrics"].items()}
    (base / "quality.json").write_text(json.dumps(quality))
    return base


def reference(bundle: Path) -> np.ndarray:
    """The bundle through plain onnxruntime, as export/embed.py runs it."""
    spec = importlib.util.spec_from_file_location("embed_example", ROOT / "export" / "embed.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.embed(bundle, TEXTS)


@pytest.fixture(scope="module")
def js_results(run_dir) -> dict:
    """Each JavaScript snippet run once over every variant (one node process per client): variant -> vectors or
    the error it raised."""
    results = {}
    for client, (_, language, _) in CLIENTS.items():
        if language != "js" or install_reason(client):
            continue
        snippet = readme_snippet(client)
        imports = [line for line in snippet.splitlines() if line.startswith("import ")]
        body = [line for line in snippet.splitlines() if line.strip() and not line.startswith("import ")]
        script = "\n".join([
            *imports,
            "const results = {};",
            f"for (const variant of {json.dumps(VARIANTS)}) {{",
            "  try {",
            *("    " + line.replace(f"'{README_PATH}'", "`runs/quickstart/artifacts/${variant}`") for line in body),
            "    results[variant] = { vectors: vectors.tolist ? vectors.tolist() : vectors };",
            "  } catch (error) { results[variant] = { error: String(error.stack || error).split('\\n')[0] }; }",
            "}",
            "console.log(JSON.stringify(results));",
        ])
        name = f"{client.replace('.', '_')}.mjs"
        (run_dir / name).write_text(script)
        shutil.copy2(ROOT / "export" / "embed.mjs", run_dir / "embed.mjs")
        # ESM imports ignore NODE_PATH: node finds the packages through a node_modules next to the script.
        link = run_dir / "node_modules"
        if not link.exists():
            link.symlink_to(os.environ["NODE_PATH"], target_is_directory=True)
        proc = subprocess.run(["node", name], cwd=run_dir, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            results[client] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:  # each of the client's tests fails with it; the Python clients' tests still run
            results[client] = {variant: {"error": f"node failed: {proc.stderr[-2000:]}"} for variant in VARIANTS}
    return results


def run_python_snippet(client: str, run_dir: Path, variant: str, monkeypatch) -> np.ndarray:
    code = readme_snippet(client).replace(README_PATH, f"runs/quickstart/artifacts/{variant}")
    monkeypatch.chdir(run_dir)  # the README's path is relative to the folder the user runs compress in
    namespace: dict = {}
    exec(compile(code, f"README.md ({client})", "exec"), namespace)
    vectors = namespace["vectors"]
    return np.asarray(vectors.detach().numpy() if hasattr(vectors, "detach") else vectors, dtype=np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("client", list(CLIENTS))
def test_client_embeds_like_onnxruntime(client, variant, run_dir, js_results, monkeypatch):
    reason = install_reason(client)
    if reason:
        pytest.skip(reason)
    bundle = run_dir / "runs" / "quickstart" / "artifacts" / variant
    expected = reference(bundle)

    if CLIENTS[client][1] == "python":
        got = run_python_snippet(client, run_dir, variant, monkeypatch)
    else:
        result = js_results[client][variant]
        assert "error" not in result, f"{client} could not embed with {variant}: {result.get('error')}"
        got = np.array(result["vectors"])

    quality = json.loads((run_dir / "quality.json").read_text()).get(variant, 1.0)
    tolerance = max(FP32_TOLERANCE, 1.0 - quality)
    assert got.shape == expected.shape, f"{client} on {variant}: shape {got.shape}, onnxruntime {expected.shape}"
    worst = 1.0 - cosines(got, expected).min()
    assert worst <= tolerance, (
        f"{client} on {variant}: 1 - cosine to onnxruntime {worst:.2e} > {tolerance:.2e} (the row's quality)")
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3, err_msg=f"{client}: not unit length")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A tiny text classifier's fp32 bundle."""
    base = tmp_path_factory.mktemp("classifier")
    model, texts = make_tiny_bert(base / "bert", num_labels=2), make_tiny_texts(base / "texts.csv")
    recipe = parse_recipe(
        f"version: 1\nname: c\ntask: text-classification\nteacher: {{source: {model}, license: apache-2.0}}\n"
        f"data: {{source: {texts}, label_field: category, eval_size: 20}}\n"
        "stages:\n  - {kind: export, parity_texts: 4}\n"
    )
    runner.run(recipe, base / "run", console=Console(quiet=True))
    return base / "run" / "artifacts" / "teacher.onnx"


def optimum_class_scores(bundle: Path) -> np.ndarray:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    model, tokenizer = ORTModelForSequenceClassification.from_pretrained(bundle), AutoTokenizer.from_pretrained(bundle)
    logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.detach().numpy()
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def transformers_js_class_scores(bundle: Path) -> np.ndarray:
    script = bundle.parent / "classify.mjs"
    script.write_text(
        "import { pipeline } from '@huggingface/transformers';\n"
        "const classify = await pipeline('text-classification', process.argv[2]);\n"
        f"console.log(JSON.stringify(await classify({json.dumps(TEXTS)}, {{ top_k: null }})));\n")
    link = bundle.parent / "node_modules"
    if not link.exists():
        link.symlink_to(os.environ["NODE_PATH"], target_is_directory=True)
    proc = subprocess.run(["node", script.name, str(bundle)], cwd=bundle.parent, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"transformers.js could not classify with {bundle.name}: {proc.stderr[-2000:]}"
    scores = [{s["label"]: s["score"] for s in row} for row in json.loads(proc.stdout.strip().splitlines()[-1])]
    # config.json leaves out the default names (LABEL_0, ...), as transformers saves them
    labels = json.loads((bundle / "config.json").read_text()).get("id2label") or {
        str(i): f"LABEL_{i}" for i in range(len(scores[0]))}
    return np.array([[row[labels[str(i)]] for i in range(len(labels))] for row in scores])


@pytest.mark.parametrize("client, scores", [
    ("optimum", optimum_class_scores),
    ("transformers.js", transformers_js_class_scores),
], ids=["optimum", "transformers.js"])
def test_client_classifies_like_onnxruntime(client, scores, classifier):
    reason = install_reason(client)
    if reason:
        pytest.skip(reason)
    logits = reference(classifier)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    got = scores(classifier)

    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{client}: class probabilities differ")


def test_embed_mjs_command_line_prints_the_bundles_embeddings(run_dir):
    """export/embed.mjs run as its header says (node embed.mjs BUNDLE texts...), from a folder of the user's."""
    reason = install_reason("onnxruntime-web")
    if reason:
        pytest.skip(reason)
    bundle = run_dir / "runs" / "quickstart" / "artifacts" / "teacher.int8-dynamic.onnx"
    app = run_dir / "app"
    app.mkdir(exist_ok=True)
    shutil.copy2(ROOT / "export" / "embed.mjs", app / "embed.mjs")
    (app / "node_modules").symlink_to(os.environ["NODE_PATH"], target_is_directory=True)

    proc = subprocess.run(["node", "embed.mjs", str(bundle), *TEXTS], cwd=app, capture_output=True, text=True,
                          timeout=300)

    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.array(json.loads(proc.stdout))
    assert 1.0 - cosines(got, reference(bundle)).min() <= FP32_TOLERANCE
