"""A model card's "How to use" section: the few lines a user's app needs to run the artifact."""

from __future__ import annotations


def how_to(name: str, manifest: dict) -> str:
    artifact = (manifest.get("artifacts") or {}).get(name) or {}
    if (manifest.get("recipe") or {}).get("task") == "image-classification":
        return how_to_images(name, artifact.get("format") == "onnx")
    if artifact.get("format") != "onnx":
        return ("## How to use\n\nA Hugging Face folder: load it with `transformers.AutoModel.from_pretrained` "
                "(or sentence-transformers for an embedding model).")
    return "\n".join([
        "## How to use", "",
        ("The bundle needs only onnxruntime, numpy and tokenizers (`export/embed.py` in the compress "
        "repository is a complete example):"), "", "```python",
        "import json, numpy as np, onnxruntime as ort", "from tokenizers import Tokenizer", "",
        f'bundle = "{name}"',
        'info = json.load(open(f"{bundle}/compress.json"))',
        'tokenizer = Tokenizer.from_file(f"{bundle}/tokenizer.json")',
        'tokenizer.enable_truncation(info["max_length"]); tokenizer.enable_padding()',
        'model = info.get("model", "model.onnx")  # onnx/model.onnx; model.onnx in bundles made before',
        'session = ort.InferenceSession(f"{bundle}/{model}", providers=["CPUExecutionProvider"])',
        'encoded = tokenizer.encode_batch(["a first text", "a second text"])',
        'feeds = {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),',
        '         "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}',
        'feeds = {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}',
        'output = session.run([info["output"]], feeds)[0]', "```"])


def how_to_images(name: str, onnx: bool) -> str:
    if not onnx:
        return ("## How to use\n\nA model folder of compress (compress_model.json, factory.py, model.safetensors): "
                "`compress.tasks.factory.load(folder)` returns the torch module.")
    return "\n".join([
        "## How to use", "",
        "The bundle needs only onnxruntime and numpy; pixel_values are float32 [batch, channels, height, width] "
        "in [0, 1], as in training:", "", "```python",
        "import json, numpy as np, onnxruntime as ort", "",
        f'bundle = "{name}"',
        'info = json.load(open(f"{bundle}/compress.json"))',
        'model = info.get("model", "model.onnx")  # onnx/model.onnx; model.onnx in bundles made before',
        'session = ort.InferenceSession(f"{bundle}/{model}", providers=["CPUExecutionProvider"])',
        'pixel_values = np.zeros((1, 1, 8, 8), dtype=np.float32)  # your images, scaled to [0, 1]',
        'logits = session.run([info["output"]], {"pixel_values": pixel_values})[0]',
        'print([info["labels"][i] for i in logits.argmax(1)])', "```"])
