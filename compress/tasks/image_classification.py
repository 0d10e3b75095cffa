"""Task image-classification: a torch vision model, pixel_values [N, C, H, W] float32 -> logits [N, classes].

Same interface as tasks/sentence_embedding.py. Models are plain torch modules from Python factories, kept as
model folders (compress/tasks/factory.py); data are images from a folder, an .npz file or sklearn:digits
(compress/tasks/image_data.py), as pixels in [0, 1]: a model that wants normalised inputs normalises them
itself. The metric is text-classification's: top-1 accuracy against the labels, macro-F1, and agreement with
the teacher's predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.tasks import text_classification

NAME = "image-classification"
HEADLINE = "accuracy"
DEFAULT_LOSS = "logit-kd"
OUTPUT_NAME = "logits"
INPUT_NAMES = ("pixel_values",)
# int8-static quantizes these by default: a CNN's weights are mostly in Conv, and torch exports Linear as MatMul
# or Gemm (transformers' default, MatMul alone, would leave a CNN in float). The activations between them too
# (residual Add, ReLU/ReLU6's Clip, padding, pooling), so that onnxruntime fuses Conv+Clip into one QLinearConv
# instead of going back to float between layers: MobileNet-style CNN on this CPU, fp32/int8 p50 at batch 1
# 1.35x vs 1.29x with Conv/MatMul/Gemm alone, agreement with fp32 1.000 vs 0.994 (360 held-out digits).
STATIC_OP_TYPES = ["Conv", "MatMul", "Gemm", "Add", "Clip", "Relu", "Pad", "ReduceMean", "GlobalAveragePool",
                   "MaxPool", "AveragePool"]

quality = text_classification.quality


def load_backbone(path: Path, trust_remote_code: bool = False, id2label: dict | None = None, **_overrides):
    """The model of a model folder; `id2label` (from finetune) names its classes. The factory fixes the head:
    its number of outputs must be the number of classes."""
    from compress.tasks.factory import load

    model = load(path)
    if id2label:
        model.compress_labels = [id2label[i] for i in sorted(id2label)]
    return model


def wrap(backbone, path: Path | None = None):
    return backbone.eval()  # the module maps pixel_values to logits already


def load_model(path: Path, trust_remote_code: bool = False):
    return wrap(load_backbone(path, trust_remote_code), path)


def bundle_info(path: Path) -> dict:
    from compress.tasks.factory import read_spec

    return {"task": NAME, "output": OUTPUT_NAME, "labels": read_spec(path).get("labels") or [],
            "pixel_values": "float32 [batch, channels, height, width]: see preprocessing"}


def preprocessing(data_cfg) -> dict:
    """What an app must do to an image before the exported model sees it (compress.json's `preprocessing`): the
    recipe's size, fit and normalisation, applied to pixels on the [0, 1] scale, channels first."""
    return {"scale": "pixels / 255 (to [0, 1])", "image_size": data_cfg.image_size, "image_fit": data_cfg.image_fit,
            "mean": data_cfg.mean, "std": data_cfg.std,
            "normalise": "(x - mean) / std per channel" if data_cfg.mean is not None or data_cfg.std is not None
            else "none"}


def build_student(spec, teacher, work_dir: Path, trust_remote_code: bool = False):
    """distill's student: the model of `student.source` (a python: factory or a model folder), its folder, and no
    layer pairs (feature losses need transformers)."""
    from compress.errors import StageError
    from compress.tasks.factory import resolve

    if spec.source is None:
        given = "from_teacher" if spec.from_teacher else "config"
        raise StageError(f"student.{given} builds a transformer from the teacher's layers or config; for "
                         f"{NAME} give student.source: python:<module or file.py>:<function>")
    folder = resolve(spec.source, Path(work_dir) / "student-source", trust_remote_code)
    student = load_backbone(folder, trust_remote_code)
    student.compress_labels = getattr(teacher, "compress_labels", None)
    return student, folder, []


# ---------------------------------------------------------------- the input hook (see tasks/common.py)


def load_data(cfg):
    from compress.tasks.image_data import load_images

    return load_images(cfg)


def examples(split) -> np.ndarray:
    return split.images


class ImageInputs:
    """Images are their own model inputs: pixel_values batches, the same for every model (no tokenizer)."""

    names = INPUT_NAMES
    axes = {0: "batch"}  # dynamic axes of pixel_values in the ONNX export

    def __init__(self, model_dir: Path | None = None):
        from compress.tasks.common import fixed_axes

        self.model_dir = model_dir
        self.fixed = fixed_axes(model_dir) if model_dir is not None else {}  # an ONNX input's fixed axes

    def encode(self, images, max_length: int | None = None, pad_to_max: bool = False) -> dict[str, np.ndarray]:
        """{"pixel_values": float32 [N, C, H, W]}; max_length and padding mean nothing for images."""
        array = np.stack(images) if isinstance(images, (list, tuple)) else images
        want = tuple(self.fixed.get(k, n) for k, n in zip(("channels", "height", "width"), array.shape[1:]))
        if tuple(array.shape[1:]) != want:  # an ONNX input with a fixed image size
            from compress.errors import SourceError

            raise SourceError(f"the model takes images of {list(want)} (channels, height, width), the data's are "
                              f"{list(array.shape[1:])}; set data.image_size: [{want[1]}, {want[2]}] (channels must "
                              "match the model's)")
        return {"pixel_values": np.ascontiguousarray(array, dtype=np.float32)}

    def batches(self, images, max_length: int | None = None, batch_size: int = 32) -> list[dict]:
        if "batch" in self.fixed:
            from compress.tasks.common import fixed_batches

            return fixed_batches(self, images, max_length, self.fixed["batch"])
        out = []
        for start in range(0, len(images), batch_size):
            batch = self.encode(images[start:start + batch_size])
            batch["_index"] = np.arange(start, start + len(batch["pixel_values"]), dtype=np.int64)
            out.append(batch)
        return out

    def sample(self, images) -> dict[str, np.ndarray]:
        """Two real images to trace the export with (the model may need their exact size)."""
        return self.encode(images[:2])

    def training(self, images, max_length: int | None = None):
        """(lengths, collate): every image costs the same; collate(index) -> {"pixel_values": tensor}."""
        import torch

        array = self.encode(images)["pixel_values"]
        return [1] * len(array), lambda index: {"pixel_values": torch.from_numpy(array[index])}


inputs = ImageInputs
