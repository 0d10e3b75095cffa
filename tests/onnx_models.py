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


def export_tiny_bert_numeric(dest: Path) -> Path:
    """A sentence-embedding ONNX model as other tools export it (issue 34): outputs with numeric names, the first
    two int64 (input_ids passed through [batch, sequence], the lengths [batch]), then the float token states
    [batch, sequence, hidden] and the float mean-pooled, L2-normalised embedding [batch, hidden]. The names are
    torch's own (no output_names given): numbers such as '461'."""
    import torch
    from transformers import BertModel

    make_tiny_bert(dest)
    model = BertModel.from_pretrained(dest).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            states = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=1)
            return input_ids + 0, attention_mask.sum(1), states, pooled

    sample = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    inputs = ["input_ids", "attention_mask"]
    dynamic = {n: {0: "batch", 1: "sequence"} for n in inputs}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model), sample, str(dest / "model.onnx"), input_names=inputs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    _rename_outputs(dest / "model.onnx", NUMERIC_OUTPUTS, ([BATCH, SEQ], [BATCH], [BATCH, SEQ, 32], [BATCH, 32]))
    (dest / "model.safetensors").unlink()
    return dest


NUMERIC_OUTPUTS = ("461", "462", "1011", "1013")
BATCH, SEQ = "batch_size", "sequence_length"


def _rename_outputs(path: Path, names: tuple[str, ...], shapes: tuple) -> None:
    """Give the graph outputs `names` (torch refuses numeric output_names, though its own names are numbers) and
    the shapes an exporter declares."""
    import onnx

    model = onnx.load(str(path))
    for out, name, shape in zip(model.graph.output, names, shapes):
        for node in model.graph.node:
            node.output[:] = [name if o == out.name else o for o in node.output]
            node.input[:] = [name if i == out.name else i for i in node.input]
        out.name = name
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dims.add().CopyFrom(onnx.TensorShapeProto.Dimension(**({"dim_param": d} if isinstance(d, str) else
                                                                   {"dim_value": d})))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
