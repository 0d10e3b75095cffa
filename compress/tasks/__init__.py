"""Tasks: what a model does, how it is loaded, exported, fed and scored.

The registry maps a task name to the module that implements it. Modules are imported on demand
because they import torch; `TASK_NAMES` is what the recipe schema needs and costs nothing.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "sentence-embedding": "compress.tasks.sentence_embedding",
    "text-classification": "compress.tasks.text_classification",
    "image-classification": "compress.tasks.image_classification",
    "causal-lm": "compress.tasks.causal_lm",
}
TASK_NAMES = tuple(_MODULES)


def get_task(name: str):
    """Return the task module for `name` (see tasks/sentence_embedding.py for the interface)."""
    return importlib.import_module(_MODULES[name])

