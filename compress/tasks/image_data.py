"""Image datasets: a folder of class subfolders, an .npz file, or scikit-learn's digits; split with a fixed seed.

Every source becomes float32 pixel_values [N, C, H, W] in [0, 1] with integer class ids, split like the text
data (compress/data.py): shuffled with `seed`, `eval_size` held out, at most `train_limit` to train on.
- `sklearn:digits`: scikit-learn's 1,797 8x8 grey digits, 10 classes (pixels 0..16 scaled to [0, 1]).
- `.npz`: arrays `images` (or `x`) [N, H, W], [N, C, H, W] or [N, H, W, C], and `labels` (or `y`), ints or
  strings; optional `label_names`. Unsigned integer pixels are scaled to [0, 1], floats are taken as they are.
  Read without pickle: object arrays are refused.
- a folder: one subfolder per class (its name is the label) of .png/.jpg/.jpeg/.bmp/.gif/.webp/.tif images,
  grey when all of them are, else RGB (all must have one size unless data.image_size is given).
Every source is brought to data.image_size when given (N or [height, width]): `image_fit: resize` stretches to
it, `center-crop` scales the shorter side to fit and crops the middle (what ImageNet evaluation does). With
data.mean and data.std (one value per channel, on the [0, 1] scale) the pixels are normalised, (x - mean) / std,
so a factory's model need not normalise its inputs itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.errors import SourceError

SKLEARN_PREFIX = "sklearn:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # float32 [N, C, H, W] in [0, 1]
    labels: list[int]


@dataclass(frozen=True)
class ImageDataset:
    train: ImageSplit
    eval: ImageSplit
    label_names: list[str]


def load_images(cfg) -> ImageDataset:
    """Load `cfg` (recipe DataConfig), keep the listed labels, shuffle with `cfg.seed`, split off `eval_size`."""
    if getattr(cfg, "split", None) or getattr(cfg, "eval_split", None):
        raise SourceError(f"data source {cfg.source!r}: split and eval_split apply to Hugging Face datasets, not "
                          "to images; eval_size rows are held out")
    images, labels, names = _read(cfg)
    images, labels, names = _keep(images, labels, names, cfg)
    images = normalise(fit(images, getattr(cfg, "image_size", None), getattr(cfg, "image_fit", None) or "resize"),
                       getattr(cfg, "mean", None), getattr(cfg, "std", None), cfg.source)
    order = np.random.default_rng(cfg.seed).permutation(len(labels))
    if cfg.eval_size >= len(order):
        raise SourceError(f"data source {cfg.source!r}: {len(order)} images, eval_size {cfg.eval_size} leaves none")
    eval_idx, train_idx = order[: cfg.eval_size], order[cfg.eval_size:]
    if cfg.train_limit:
        train_idx = train_idx[: cfg.train_limit]

    def take(idx) -> ImageSplit:
        return ImageSplit(np.ascontiguousarray(images[idx]), [int(labels[i]) for i in idx])

    return ImageDataset(train=take(train_idx), eval=take(eval_idx), label_names=names)


def _read(cfg) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images [N, C, H, W] float32, class ids [N], class names) of the whole source."""
    source = cfg.source
    if source.startswith(SKLEARN_PREFIX):
        return _sklearn(source)
    from compress.sources import resolve_local

    path = resolve_local(source)
    if path is None or not path.exists():
        raise SourceError(f"data source {source!r}: no such file or folder (images: a folder of class subfolders, "
                          "an .npz file, or sklearn:digits)")
    if path.is_dir():
        return _folder(path, source, getattr(cfg, "image_size", None), getattr(cfg, "image_fit", None) or "resize")
    if path.suffix.lower() == ".npz":
        return _npz(path, source)
    raise SourceError(f"data source {source!r}: images come from a folder of class subfolders, an .npz file or "
                      "sklearn:digits")


def _sklearn(source: str):
    name = source[len(SKLEARN_PREFIX):]
    if name != "digits":
        raise SourceError(f"data source {source!r}: the scikit-learn image set is sklearn:digits")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SourceError(f"data source {source!r}: scikit-learn is not installed (pip install scikit-learn)") from None
    digits = load_digits()  # shipped inside scikit-learn: no download
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    return images, digits.target.astype(np.int64), [str(n) for n in digits.target_names]


def _npz(path: Path, source: str):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:  # not a zip, or object arrays (which would need pickle)
        raise SourceError(f"data source {source!r}: cannot read {path.name} without pickle ({exc})") from None
    x = next((arrays[k] for k in ("images", "x") if k in arrays), None)
    y = next((arrays[k] for k in ("labels", "y") if k in arrays), None)
    if x is None or y is None:
        raise SourceError(f"data source {source!r}: expected arrays images (or x) and labels (or y) "
                          f"(have: {sorted(arrays)})")
    if len(x) != len(y) or y.ndim != 1:
        raise SourceError(f"data source {source!r}: {len(x)} images but labels of shape {y.shape}")
    images = _nchw(x, source)
    if "label_names" in arrays and y.dtype.kind in "iu":
        return images, y.astype(np.int64), [str(n) for n in arrays["label_names"]]
    names = sorted({str(v) for v in y}, key=lambda v: (len(v), v) if y.dtype.kind in "iu" else (0, v))
    ids = {name: i for i, name in enumerate(names)}
    return images, np.asarray([ids[str(v)] for v in y], dtype=np.int64), names


def _nchw(x: np.ndarray, source: str) -> np.ndarray:
    """[N, H, W], [N, C, H, W] or [N, H, W, C] (C of 1, 3 or 4) as float32 [N, C, H, W] in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise SourceError(f"data source {source!r}: images of shape {x.shape}; expected [N, H, W], [N, C, H, W] or "
                          "[N, H, W, C]")
    if x.dtype.kind == "u":
        return (x / np.iinfo(x.dtype).max).astype(np.float32)
    if x.dtype.kind not in "fi":
        raise SourceError(f"data source {source!r}: images of dtype {x.dtype}; expected numbers")
    return np.ascontiguousarray(x, dtype=np.float32)


def _target(size) -> tuple[int, int] | None:
    """data.image_size as (height, width)."""
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _fit_image(image, target: tuple[int, int], how: str):
    """A PIL image brought to (height, width): stretched, or scaled to cover it and cropped in the middle."""
    from PIL import Image

    height, width = target
    if image.size == (width, height):
        return image
    if how != "center-crop":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    scale = max(height / image.size[1], width / image.size[0])
    scaled = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
    image = image.resize(scaled, Image.Resampling.BILINEAR)
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def fit(images: np.ndarray, size, how: str = "resize") -> np.ndarray:
    """float32 [N, C, H, W] brought to data.image_size (see the module's docstring); unchanged without one."""
    target = _target(size)
    if target is None or images.shape[2:] == target:
        return images
    from PIL import Image

    out = np.empty((*images.shape[:2], *target), dtype=np.float32)
    for n in range(images.shape[0]):
        for c in range(images.shape[1]):
            out[n, c] = np.asarray(_fit_image(Image.fromarray(np.ascontiguousarray(images[n, c])), target, how))
    return out


def normalise(images: np.ndarray, mean, std, source: str) -> np.ndarray:
    """(x - mean) / std per channel; a single value applies to every channel."""
    if mean is None and std is None:
        return images
    channels = images.shape[1]
    values = []
    for name, given, default in (("mean", mean, 0.0), ("std", std, 1.0)):
        array = np.asarray(default if given is None else given, dtype=np.float32).reshape(-1)
        if array.size not in (1, channels):
            raise SourceError(f"data source {source!r}: data.{name} has {array.size} values for {channels}-channel "
                              "images (give one, or one per channel)")
        values.append(np.broadcast_to(array, (channels,)).reshape(1, channels, 1, 1))
    if np.any(values[1] == 0):
        raise SourceError(f"data source {source!r}: data.std holds a 0")
    return ((images - values[0]) / values[1]).astype(np.float32)


def _folder(path: Path, source: str, size, how: str = "resize"):
    from PIL import Image

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(f, name) for name in classes for f in sorted((path / name).rglob("*"))
             if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not files:
        raise SourceError(f"data source {source!r}: no images in class subfolders (<folder>/<class>/<image>.png)")
    modes = []
    for file, _ in files:
        try:
            with Image.open(file) as image:  # the header only
                modes.append(image.mode)
        except OSError as exc:
            raise SourceError(f"data source {source!r}: cannot read {file} ({exc})") from None
    grey = all(mode in GREY_MODES for mode in modes)
    target = _target(size)
    arrays: list[np.ndarray] = []
    for file, _ in files:
        with Image.open(file) as image:
            image = image.convert("L" if grey else "RGB")
        if target:
            image = _fit_image(image, target, how)
        array = np.asarray(image, dtype=np.uint8)
        if arrays and array.shape != arrays[0].shape:
            raise SourceError(f"data source {source!r}: {file.name} is {array.shape[1]}x{array.shape[0]}, "
                              f"{files[0][0].name} {arrays[0].shape[1]}x{arrays[0].shape[0]}; set data.image_size "
                              "to resize them all")
        arrays.append(array)
    images = np.stack(arrays)
    images = images[:, None] if grey else images.transpose(0, 3, 1, 2)
    names = sorted({name for _, name in files})
    ids = {name: i for i, name in enumerate(names)}
    return (images / 255.0).astype(np.float32), np.asarray([ids[n] for _, n in files], dtype=np.int64), names


def _keep(images: np.ndarray, labels: np.ndarray, names: list[str], cfg):
    """Only the classes listed in data.labels, in that order (their ids); all of them otherwise."""
    if not cfg.labels:
        return images, labels, names
    missing = [n for n in cfg.labels if n not in names]
    if missing:
        raise SourceError(f"data source {cfg.source!r}: no class {missing[0]!r} (have: {names})")
    new_id = {names.index(n): i for i, n in enumerate(cfg.labels)}
    keep = np.asarray([int(v) in new_id for v in labels])
    return images[keep], np.asarray([new_id[int(v)] for v in labels[keep]], dtype=np.int64), list(cfg.labels)
