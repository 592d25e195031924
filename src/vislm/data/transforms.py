"""Turn RGB pictures into normalised tensors, and back for visualisation.

Pillow + numpy only (no torchvision). There is deliberately no augmentation:
flips and crops would silently change what "left of" or "in the top left" means
in a caption or question.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from vislm.errors import ConfigError

RESIZE_MODES = ("squash", "shorter_crop")


class ImageTransform:
    """PIL RGB image -> float32 tensor (3, size, size), normalised per channel.

    resize="squash" stretches the whole picture to a square (nothing is cut off, so
    every object a caption mentions stays visible); "shorter_crop" scales the shorter
    side to `size` and cuts the centre square (no distortion, edges may be lost).
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        resize: str = "squash",
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"ImageTransform: size must be a positive integer, got {size!r}")
        if resize not in RESIZE_MODES:
            raise ConfigError(f"ImageTransform: resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.size = size
        self.mean = _three_floats(mean, "mean")
        self.std = _three_floats(std, "std")
        if any(value <= 0 for value in self.std):
            raise ConfigError(f"ImageTransform: std values must be positive, got {self.std}")
        self.resize = resize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            # Converting here would hide alpha/16-bit handling mistakes; load_image does it right.
            raise ValueError(
                f"ImageTransform expects an RGB image (use vislm.data.images.load_image), got mode {image.mode!r}"
            )
        image = self._resized(image)
        pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def _resized(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if (width, height) == (self.size, self.size):
            return image  # exact pixels: resampling a same-size image would only blur it
        if self.resize == "squash":
            return image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        scale = self.size / min(width, height)
        new_width = max(self.size, round(width * scale))
        new_height = max(self.size, round(height * scale))
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
        left = (new_width - self.size) // 2
        top = (new_height - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def config(self) -> dict:
        """Plain settings, to store next to a model so inference preprocesses identically."""
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "resize": self.resize}

    def to_pil(self, tensor: torch.Tensor) -> Image.Image:
        return to_pil(tensor, self.mean, self.std)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageTransform) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash((self.size, self.mean, self.std, self.resize))

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, mean={self.mean}, std={self.std}, resize={self.resize!r})"


def to_pil(
    tensor: torch.Tensor, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)
) -> Image.Image:
    """Undo the normalisation of a (3, H, W) tensor and return an RGB image."""
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"to_pil expects a tensor of shape (3, H, W), got {tuple(tensor.shape)}")
    pixels = tensor.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)
    pixels = pixels * np.asarray(_three_floats(std, "std"), dtype=np.float32)
    pixels = pixels + np.asarray(_three_floats(mean, "mean"), dtype=np.float32)
    return Image.fromarray(np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8))


def _three_floats(values: Sequence[float], name: str) -> tuple[float, float, float]:
    try:
        floats = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise ConfigError(f"ImageTransform: {name} must be three numbers, got {values!r}") from None
    if len(floats) != 3:
        raise ConfigError(f"ImageTransform: {name} must be three numbers (one per RGB channel), got {len(floats)}")
    return floats
