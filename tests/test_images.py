"""Image loading (every odd or broken input) and preprocessing transforms."""

import numpy as np
import pytest
import torch
from PIL import Image

from vislm.data.images import load_image
from vislm.data.transforms import ImageTransform, to_pil
from vislm.errors import ConfigError, DataError


def pixels(image):
    return np.asarray(image).reshape(-1, 3).tolist()


def noise_image(width=64, height=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def stored(path):
    """Mode and size as stored in the file, before any conversion."""
    with Image.open(path) as image:
        return image.mode, image.size


def assert_one_line_error(error_info, path, text):
    message = str(error_info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert text in message


# --- Broken or hostile files ---------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(DataError) as error:
        load_image(path)
    assert str(error.value) == f"{path}: image file not found"


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(DataError) as error:
        load_image(tmp_path)
    assert str(error.value) == f"{tmp_path}: not a regular file"


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError) as error:
        load_image(path)
    assert_one_line_error(error, path, "cannot decode image (")


def test_text_file_with_image_extension(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG\nsecond line\n")
    with pytest.raises(DataError) as error:
        load_image(path)
    assert_one_line_error(error, path, "cannot decode image (")


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file_fails_at_load_time(tmp_path, suffix):
    whole = tmp_path / f"whole.{suffix}"
    noise_image().save(whole)
    data = whole.read_bytes()
    truncated = tmp_path / f"truncated.{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as error:
        load_image(truncated)
    assert_one_line_error(error, truncated, "cannot decode image (")
    assert "truncated" in str(error.value)


def test_corrupt_png_data(tmp_path):
    path = tmp_path / "corrupt.png"
    noise_image().save(path)
    data = bytearray(path.read_bytes())
    data[200:220] = bytes(20)  # inside the compressed pixel data
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as error:
        load_image(path)
    assert_one_line_error(error, path, "cannot decode image (")


def test_pixel_limit_of_the_loader(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    assert load_image(path, max_pixels=400).size == (20, 20)
    with pytest.raises(DataError) as error:
        load_image(path, max_pixels=399)
    assert_one_line_error(error, path, "image too large, refusing a possible decompression bomb (20x20 = 400 pixels, limit 399)")


@pytest.mark.parametrize("pillow_limit", [300, 150], ids=["pillow-warning", "pillow-error"])
def test_pillow_decompression_bomb_checks_both_raise(tmp_path, monkeypatch, pillow_limit):
    # Pillow warns above its limit and errors above twice its limit: 400 pixels hits each in turn.
    path = tmp_path / "bomb.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with pytest.raises(DataError) as error:
        load_image(path)
    assert_one_line_error(error, path, "image too large, refusing a possible decompression bomb")


# --- Modes and orientation -----------------------------------------------------------------------


def test_rgb_png_round_trips_exactly(tmp_path):
    path = tmp_path / "rgb.png"
    original = noise_image(7, 5)
    original.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert np.array_equal(np.asarray(loaded), np.asarray(original))


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)  # no cyan, full magenta+yellow = red
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert np.abs(np.asarray(loaded, dtype=int) - [255, 0, 0]).max() <= 3


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 128 * 257, 65535, 1000]], dtype=np.uint16)).save(path)
    assert stored(path)[0] in ("I;16", "I")
    loaded = load_image(path)
    # Pillow's own convert("L") would give 0, 255, 255, 255 here.
    assert pixels(loaded) == [[0, 0, 0], [128, 128, 128], [255, 255, 255], [4, 4, 4]]


def test_32_bit_integer_image(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32)).save(path)
    assert stored(path)[0] == "I"
    assert pixels(load_image(path)) == [[0, 0, 0], [255, 255, 255], [255, 255, 255]]


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_palette_with_transparency_goes_over_white(tmp_path, suffix):
    path = tmp_path / f"palette.{suffix}"
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (transparent), index 1 blue
    image.putpixel((1, 0), 1)
    image.save(path, transparency=0)
    assert pixels(load_image(path)) == [[255, 255, 255], [0, 0, 255]]


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (1, 1))
    image.putpalette([10, 20, 30])
    image.save(path)
    assert pixels(load_image(path)) == [[10, 20, 30]]


def test_grayscale_and_bilevel(tmp_path):
    gray, bilevel = tmp_path / "gray.png", tmp_path / "bilevel.png"
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(gray)
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1").save(bilevel)
    assert pixels(load_image(gray)) == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]
    assert pixels(load_image(bilevel)) == [[0, 0, 0], [255, 255, 255]]


def test_gray_with_alpha_composites_over_white(tmp_path):
    path = tmp_path / "la.png"
    luminance = Image.fromarray(np.array([[0, 100, 0]], dtype=np.uint8))
    alpha = Image.fromarray(np.array([[0, 255, 128]], dtype=np.uint8))
    Image.merge("LA", [luminance, alpha]).save(path)
    # black at alpha 128 over white: 255 * (1 - 128/255) = 127
    assert pixels(load_image(path)) == [[255, 255, 255], [100, 100, 100], [127, 127, 127]]


def test_rgba_composites_over_white_not_black(tmp_path):
    path = tmp_path / "rgba.png"
    data = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(data).save(path)
    assert pixels(load_image(path)) == [[255, 255, 255], [0, 0, 255], [255, 255, 255]]


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(path, exif=exif, quality=95)
    assert stored(path)[1] == (40, 20)
    loaded = np.asarray(load_image(path), dtype=int)
    assert loaded.shape == (40, 20, 3)  # height 40, width 20: upright
    # Turning clockwise moves the left (red) half to the top.
    assert np.abs(loaded[5, 10] - [255, 0, 0]).max() < 40
    assert np.abs(loaded[35, 10] - [0, 0, 255]).max() < 40


# --- Transforms ----------------------------------------------------------------------------------


def test_transform_normalises_each_channel():
    image = Image.new("RGB", (4, 4), (255, 0, 51))
    tensor = ImageTransform(4)(image)
    assert tensor.shape == (3, 4, 4) and tensor.dtype == torch.float32
    expected = torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]).view(3, 1, 1).expand(3, 4, 4)
    assert torch.allclose(tensor, expected, atol=1e-6)


def test_transform_with_custom_statistics():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    tensor = ImageTransform(2, mean=mean, std=std)(Image.new("RGB", (2, 2), (51, 102, 153)))
    expected = [(0.2 - 0.1) / 0.5, (0.4 - 0.2) / 0.25, (0.6 - 0.3) / 2.0]
    assert torch.allclose(tensor[:, 0, 0], torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("resize", ["squash", "shorter_crop"])
def test_same_size_image_round_trips_exactly(resize):
    original = noise_image(16, 16, seed=3)
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    transform = ImageTransform(16, mean=mean, std=std, resize=resize)
    restored = transform.to_pil(transform(original))
    assert np.array_equal(np.asarray(restored), np.asarray(original))
    assert np.array_equal(np.asarray(to_pil(transform(original), mean, std)), np.asarray(original))


def band_image():
    """40x20: red columns 0-9, green 10-29, blue 30-39."""
    image = Image.new("RGB", (40, 20), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))
    image.paste((0, 0, 255), (30, 0, 40, 20))
    return image


def test_squash_keeps_the_whole_picture():
    restored = np.asarray(to_pil(ImageTransform(16, resize="squash")(band_image())), dtype=int)
    assert restored.shape == (16, 16, 3)
    assert np.abs(restored[8, 0] - [255, 0, 0]).max() < 10
    assert np.abs(restored[8, 8] - [0, 255, 0]).max() < 10
    assert np.abs(restored[8, 15] - [0, 0, 255]).max() < 10


def test_shorter_crop_keeps_the_centre_undistorted():
    restored = np.asarray(to_pil(ImageTransform(20, resize="shorter_crop")(band_image())))
    assert restored.shape == (20, 20, 3)
    assert (restored == [0, 255, 0]).all()  # exactly the green centre band, nothing else


def test_shorter_crop_of_a_tall_image_scales_the_width():
    image = Image.new("RGB", (10, 30), (200, 100, 50))
    assert ImageTransform(5, resize="shorter_crop")(image).shape == (3, 5, 5)


def test_transform_refuses_non_rgb_input():
    with pytest.raises(ValueError, match=r"expects an RGB image .* got mode 'RGBA'"):
        ImageTransform(4)(Image.new("RGBA", (4, 4)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 0}, "ImageTransform: size must be a positive integer, got 0"),
        ({"size": 8, "resize": "crop"}, "ImageTransform: resize must be one of squash, shorter_crop, got 'crop'"),
        ({"size": 8, "std": (0.5, 0.0, 0.5)}, "ImageTransform: std values must be positive, got (0.5, 0.0, 0.5)"),
        ({"size": 8, "mean": (0.5, 0.5)}, "ImageTransform: mean must be three numbers (one per RGB channel), got 2"),
    ],
)
def test_transform_settings_are_checked(kwargs, message):
    with pytest.raises(ConfigError) as error:
        ImageTransform(**kwargs)
    assert str(error.value) == message


def test_transform_equality_follows_its_settings():
    assert ImageTransform(8) == ImageTransform(8, mean=[0.5, 0.5, 0.5])
    assert ImageTransform(8) != ImageTransform(8, resize="shorter_crop")
    assert ImageTransform(8).config() == {"size": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash"}


def test_to_pil_checks_the_shape():
    with pytest.raises(ValueError, match=r"shape \(3, H, W\), got \(1, 3, 4, 4\)"):
        to_pil(torch.zeros(1, 3, 4, 4))
