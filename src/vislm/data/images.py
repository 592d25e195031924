"""Load any image file as a plain RGB picture, or fail with a DataError naming the file.

Real datasets contain CMYK JPEGs, 16-bit PNGs, palette GIFs with transparency,
phone photos rotated by EXIF tags, truncated downloads and the odd text file
with an image extension. Everything downstream assumes an upright RGB image,
so every such case is settled here, once.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vislm.errors import DataError

# ~8k x 8k. Far above any training image, far below what a malicious
# "decompression bomb" (a tiny file that decodes to gigabytes) asks for.
MAX_PIXELS = 64_000_000

# Composite transparent pixels over white: that is how viewers show them, whereas
# dropping alpha exposes whatever colour the encoder left there (often black).
_TRANSPARENT_BACKGROUND = (255, 255, 255, 255)

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_DIRECT_TO_RGB_MODES = {"RGB", "L", "1", "CMYK", "YCbCr", "RGBX", "HSV"}


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` fully, apply its EXIF orientation and return an RGB image."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: image file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        # Pillow only warns between its limit and twice its limit; make both an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_pixel_count(image, max_pixels, path)
                image.load()  # decode now, so truncated or corrupt data fails here
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright, path)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = _one_line(error)
        raise DataError(f"{path}: image too large, refusing a possible decompression bomb ({reason})") from None
    except Exception as error:  # Pillow's decoders raise many exception types on corrupt data.
        raise DataError(f"{path}: cannot decode image ({type(error).__name__}: {_one_line(error)})") from None


def _check_pixel_count(image: Image.Image, max_pixels: int, path: Path) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise DataError(
            f"{path}: image too large, refusing a possible decompression bomb"
            f" ({width}x{height} = {width * height} pixels, limit {max_pixels})"
        )


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """A new RGB image (never the file-backed original, which is closed on return)."""
    mode = image.mode
    if mode in _ALPHA_MODES:
        return _over_white(image.convert("RGBA"))
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)  # a rare 16-bit transparent colour is ignored
    if "transparency" in image.info:  # palette or grey/RGB with one transparent colour
        return _over_white(image.convert("RGBA"))
    if mode == "P":
        return image.convert("RGB")
    if mode == "F":
        # Float images have no standard range; treat them as 0..255 like Pillow's own "L" view.
        pixels = np.clip(np.asarray(image, dtype=np.float32), 0, 255)
        return Image.fromarray(np.rint(pixels).astype(np.uint8)).convert("RGB")
    if mode in _DIRECT_TO_RGB_MODES:
        return image.convert("RGB")
    raise DataError(f"{path}: unsupported image mode {mode!r}")


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _TRANSPARENT_BACKGROUND)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values at 255, turning almost every
    # pixel white; rescale the 0..65535 range instead (65535 / 257 = 255).
    pixels = np.asarray(image).astype(np.float64)
    gray = np.rint(np.clip(pixels, 0, 65535) / 257.0).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or "no details"
