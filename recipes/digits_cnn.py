"""Two CNNs for scikit-learn's 8x8 digits: the factories of recipes/digits-cnn.yaml.

A factory is a function without arguments that returns a torch.nn.Module mapping pixel_values
[N, 1, 8, 8] (float32 in [0, 1]) to logits [N, 10]. Plain torch: compress copies this file into every model
folder it writes, so it imports nothing but torch.
"""

from torch import nn


def teacher() -> nn.Module:
    """About 227k parameters: three 3x3 convolutions (32, 64, 128 channels) and a 256-wide classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
        nn.Flatten(), nn.Linear(128 * 2 * 2, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10),
    )


def student() -> nn.Module:
    """About 6k parameters (1/37 of the teacher): two 3x3 convolutions (16, 32 channels), a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )
