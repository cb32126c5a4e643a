"""images.normalize_image: every awkward input either becomes an 8-bit RGB PNG or a typed rejection."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest_factories import bomb_png, image_bytes, noise, truncated, write
from pipelines import images
from pipelines.images import (
    ImageInfo,
    ImageLimits,
    ImageReason,
    ImageRejected,
    normalize_image,
    try_normalize,
)


def stored_pixels(info: ImageInfo) -> np.ndarray:
    with Image.open(info.stored_path) as img:
        assert (img.format, img.mode) == ("PNG", "RGB")
        return np.asarray(img)


def rejection(src: Path | bytes, limits: ImageLimits = ImageLimits()) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        normalize_image(src, None, limits)
    return caught.value


def test_rgb_png_is_stored_content_addressed_by_original_bytes(tmp_path):
    data = image_bytes(1)
    src = write(tmp_path / "a.png", data)
    info = normalize_image(src, tmp_path / "store")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.stored_path == tmp_path / "store" / f"{info.sha256}.png"
    assert (info.width, info.height, info.format, info.mode) == (16, 12, "PNG", "RGB")
    with Image.open(io.BytesIO(data)) as original:
        assert np.array_equal(stored_pixels(info), np.asarray(original))
    assert [p.name for p in (tmp_path / "store").iterdir()] == [f"{info.sha256}.png"]


def test_bytes_and_path_give_the_same_result(tmp_path):
    data = image_bytes(2, "JPEG")
    assert normalize_image(data).sha256 == normalize_image(write(tmp_path / "x.jpg", data)).sha256


def test_probe_only_writes_nothing(tmp_path):
    info = normalize_image(image_bytes(3), None)
    assert info.stored_path is None and info.stored_size == (16, 12)


def test_large_image_is_downsized_to_store_max_side_keeping_original_size(tmp_path):
    info = normalize_image(image_bytes(4, "JPEG", size=(80, 40)), tmp_path, ImageLimits(store_max_side=20))
    assert (info.width, info.height) == (80, 40)
    assert info.stored_size == (20, 10)
    assert stored_pixels(info).shape == (10, 20, 3)


def test_zero_byte_file_is_empty_file(tmp_path):
    assert rejection(write(tmp_path / "empty.jpg", b"")).reason == ImageReason.EMPTY_FILE


def test_missing_file_is_unreadable_file(tmp_path):
    assert rejection(tmp_path / "nope.png").reason == ImageReason.UNREADABLE_FILE


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    src = write(tmp_path / "notes.jpg", b"lesion looked fine, see chart\n")
    err = rejection(src)
    assert err.reason == ImageReason.NOT_AN_IMAGE
    assert err.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()


def test_truncated_jpeg_is_truncated_image():
    assert rejection(truncated(image_bytes(5, "JPEG", size=(64, 48)))).reason == ImageReason.TRUNCATED_IMAGE


def test_truncated_png_is_truncated_image():
    assert rejection(truncated(image_bytes(6, "PNG", size=(64, 48)))).reason == ImageReason.TRUNCATED_IMAGE


def test_header_claiming_ten_billion_pixels_is_a_decompression_bomb():
    err = rejection(bomb_png(100_000, 100_000))
    assert err.reason == ImageReason.DECOMPRESSION_BOMB


def test_image_over_max_pixels_param_is_a_decompression_bomb_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "_decode", lambda *a: pytest.fail("decoded a bomb"))
    err = rejection(image_bytes(7, size=(30, 30)), ImageLimits(max_pixels=500))
    assert err.reason == ImageReason.DECOMPRESSION_BOMB
    assert "900" in err.detail


def test_sliver_below_min_side_is_too_small():
    assert rejection(image_bytes(8, size=(40, 4)), ImageLimits(min_side=8)).reason == ImageReason.TOO_SMALL


def test_grayscale_is_converted_to_rgb(tmp_path):
    data = image_bytes(9, mode="L")
    info = normalize_image(data, tmp_path)
    pixels = stored_pixels(info)
    assert info.mode == "L"
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    with Image.open(io.BytesIO(data)) as original:
        assert np.array_equal(pixels[..., 0], np.asarray(original))


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((12, 16, 4), np.uint8)
    rgba[:, :8] = (200, 10, 10, 255)  # opaque red left half, fully transparent right half
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    pixels = stored_pixels(normalize_image(buf.getvalue(), tmp_path))
    assert tuple(pixels[0, 0]) == (200, 10, 10)
    assert tuple(pixels[0, 15]) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (16, 12), 0)
    img.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    assert tuple(stored_pixels(normalize_image(buf.getvalue(), tmp_path))[5, 5]) == (255, 255, 255)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    info = normalize_image(image_bytes(10, "JPEG", mode="CMYK"), tmp_path)
    assert info.mode == "CMYK"
    assert stored_pixels(info).shape == (12, 16, 3)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 257 * 128, 65535] * 4] * 9, dtype=np.uint16)  # 12 x 9
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    info = normalize_image(buf.getvalue(), tmp_path)
    assert info.mode.startswith("I;16")
    assert list(stored_pixels(info)[0, :3, 0]) == [0, 128, 255]


def test_float_tiff_is_stretched_to_8_bit(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.linspace(-1, 1, 16 * 12, dtype=np.float32).reshape(12, 16)).save(buf, "TIFF")
    pixels = stored_pixels(normalize_image(buf.getvalue(), tmp_path))
    assert (pixels.min(), pixels.max()) == (0, 255)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((12, 24, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    info = normalize_image(buf.getvalue(), tmp_path)
    assert (info.width, info.height) == (24, 12)
    assert info.stored_size == (12, 24)


def test_unexpected_decoder_error_becomes_corrupt_image(monkeypatch):
    def explode(img):
        raise IndexError("decoder bug")

    monkeypatch.setattr(images, "_to_rgb", explode)
    outcome = try_normalize(image_bytes(11))
    assert isinstance(outcome, ImageRejected) and outcome.reason == ImageReason.CORRUPT_IMAGE


def test_rejection_survives_pickling_between_processes():
    err = pickle.loads(pickle.dumps(ImageRejected(ImageReason.TRUNCATED_IMAGE, "cut", "ab12")))
    assert (err.reason, err.detail, err.sha256) == (ImageReason.TRUNCATED_IMAGE, "cut", "ab12")


def test_side_over_max_side_is_too_large_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "_decode", lambda *a: pytest.fail("decoded an oversize image"))
    err = rejection(image_bytes(9, size=(300, 10)), ImageLimits(max_side=200))
    assert err.reason == ImageReason.TOO_LARGE and err.detail == "300x10 > bounds.max_side 200"


def test_thirty_thousand_pixel_side_is_too_large_with_the_default_bounds():
    assert rejection(bomb_png(30_000, 10)).reason == ImageReason.TOO_LARGE


def test_size_problem_is_the_header_check_on_a_known_size():
    limits = ImageLimits(min_side=8, max_side=100, max_pixels=5000)
    assert images.size_problem(50, 50, limits) is None
    assert images.size_problem(4, 50, limits).reason == ImageReason.TOO_SMALL
    assert images.size_problem(101, 10, limits).reason == ImageReason.TOO_LARGE
    assert images.size_problem(100, 100, limits).reason == ImageReason.DECOMPRESSION_BOMB


def test_normalisation_digest_changes_with_what_decides_the_stored_bytes(monkeypatch):
    base = images.normalisation_digest(256)
    assert images.normalisation_digest(256) == base and images.normalisation_digest(128) != base
    monkeypatch.setattr(images, "NORMALISATION_VERSION", images.NORMALISATION_VERSION + 1)
    assert images.normalisation_digest(256) != base


# ------------------------------------------------------------------ what is never read, and stable details


def test_a_fifo_is_refused_without_blocking_and_a_symlink_is_never_read_through(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    rejected = images.try_normalize(fifo)  # a plain open() would block here forever
    assert isinstance(rejected, images.ImageRejected) and rejected.reason == "unreadable_file"
    assert rejected.detail == "not a regular file: never read"
    real = tmp_path / "real.png"
    real.write_bytes(image_bytes(1))
    (tmp_path / "link.png").symlink_to(real)
    via_link = images.try_normalize(tmp_path / "link.png")
    assert isinstance(via_link, images.ImageRejected) and via_link.reason == "unreadable_file"
    assert isinstance(images.try_normalize(real), images.ImageInfo)


def test_rejection_details_carry_no_memory_address():
    first = images.try_normalize(b"plain text, not an image")
    second = images.try_normalize(b"plain text, not an image")
    assert first.reason == "not_an_image" and first.detail == second.detail
    assert "0x" not in first.detail and "BytesIO" not in first.detail


def test_frames_are_counted_so_ingest_can_list_the_unused_ones():
    frames = [Image.fromarray(noise((16, 12), seed)) for seed in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    assert images.normalize_image(buf.getvalue()).frames == 2
    assert images.normalize_image(image_bytes(3)).frames == 1
