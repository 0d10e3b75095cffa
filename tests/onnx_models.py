"""ONNX models made inside the tests (issue 17): exported with torch.onnx, the PyTorch weights then deleted."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from conftest import make_tiny_bert


def export_tiny_bert(dest: Path, token_type_ids: bool = True, fixed: tuple[int, int] | None = None,
                     output: str = "last_hidden_state") -> Path:
    """A folder with model.onnx (a BertModel's token states) and the tokenizer files, and no PyTorch weights."""
    import torch
    from transformers import BertModel

    make_tiny_bert(dest)
    model = BertModel.from_pretrained(dest).eval()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type_ids else [])

    class Wrapper(torch.nn.Module):  # keyword arguments: positional BertModel export trips over use_cache
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).last_hidden_state

    batch, seq = fixed or (2, 8)
    sample = tuple(torch.ones(batch, seq, dtype=torch.long) * (0 if n == "token_type_ids" else 1) for n in names)
    dynamic = None if fixed else {n: {0: "batch", 1: "sequence"} for n in [*names, output]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model), sample, str(dest / "model.onnx"), input_names=names, output_names=[output],
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    (dest / "model.safetensors").unlink()  # the PyTorch model is gone: only the ONNX file is left
    return dest


def export_tiny_cnn(dest: Path, classes: int = 10, input_name: str = "pixel_values") -> Path:
    """A folder with model.onnx: a small CNN, [batch, 1, 8, 8] images (sklearn digits) -> logits."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(32, classes)).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 1, 8, 8),), str(dest / "model.onnx"), input_names=[input_name],
                          output_names=["logits"], dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    (dest / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny CNN\n")
    return dest


def copy_onnx(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest
