"""Images: decoded safely, then resized, normalized, padded and laid out as the spec says."""

from typing import Any

import numpy as np
import pytest

from modelstream.errors import InvalidEventError
from modelstream.preprocess import image as images
from tests.support.tensor_models import jpeg, png, png_bomb

RNG = np.random.default_rng(3)
NOISE = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)


def spec(**overrides: Any) -> Any:
    base = {
        "color": "RGB",
        "height": 4,
        "width": 6,
        "resize": "STRETCH",
        "resize_shorter_to": 0,
        "interpolation": "BILINEAR",
        "scale": 1.0,
        "mean": [],
        "std": [],
        "pad": "END",
        "pad_value": 0.0,
        "layout": "NCHW",
        "formats": ["PNG", "JPEG"],
        "max_pixels": 40_000_000,
    }
    return {**base, **overrides}


def test_png_and_jpeg_decode_to_the_spec_colour_mode():
    pixels = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.decode(png(pixels), spec()), pixels)
    np.testing.assert_array_equal(images.decode(png(pixels), spec(color="BGR")), pixels[:, :, ::-1])
    grey = images.decode(png(pixels), spec(color="L"))
    assert grey.shape == (5, 7, 1)
    smooth = np.full((16, 16, 3), 120, np.uint8)
    assert np.abs(images.decode(jpeg(smooth), spec()).astype(int) - 120).max() <= 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "invalid-image"),
        (b"not an image at all", "invalid-image"),
        (png(NOISE)[:2000], "invalid-image"),  # truncated inside the pixels
        (jpeg(np.zeros((32, 32, 3), np.uint8))[:200], "invalid-image"),  # truncated
        (png_bomb(), "image-too-large"),  # declares 100,000 x 100,000
        (png_bomb(9000, 9000), "image-too-large"),  # 81 M pixels: over max_pixels
    ],
)
def test_broken_or_hostile_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(InvalidEventError) as caught:
        images.decode(data, spec(max_pixels=40_000_000))
    assert caught.value.reason == reason


def test_corrupt_bytes_inside_a_png_are_refused():
    data = bytearray(png(RNG.integers(0, 256, (30, 30, 3), dtype=np.uint8)))
    data[len(data) // 2] ^= 0xFF  # inside the compressed pixels: a CRC mismatch
    with pytest.raises(InvalidEventError) as caught:
        images.decode(bytes(data), spec())
    assert caught.value.reason == "invalid-image"


def test_only_the_named_formats_are_parsed():
    pixels = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(InvalidEventError, match="accepted format"):
        images.decode(jpeg(pixels), spec(formats=["PNG"]))


def test_opencv_linear_interpolates_between_pixel_centres():
    """cv2.resize INTER_LINEAR of [0, 100] to 4 wide is [0, 25, 75, 100]: centres map to
    -0.25, 0.25, 0.75, 1.25 and are clamped at the borders (no antialiasing)."""
    row = np.asarray([[[0], [100]]], np.uint8)
    assert images.resize(row, (1, 4), "OPENCV_LINEAR")[0, :, 0].tolist() == [0, 25, 75, 100]
    flat = np.full((9, 13, 3), 77, np.uint8)
    assert (images.resize(flat, (4, 5), "OPENCV_LINEAR") == 77).all()
    # shrinking by 2 averages the two nearest source pixels of each output pixel
    wide = np.asarray([[[0], [10], [20], [30]]], np.uint8)
    assert images.resize(wide, (1, 2), "OPENCV_LINEAR")[0, :, 0].tolist() == [5, 25]


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("STRETCH", (10, 40), (4, 6)),
        ("FIT", (10, 40), (2, 6)),  # wide: the width binds
        ("FIT", (40, 10), (4, 1)),
        ("HEIGHT", (10, 40), (4, 6)),  # 16 wide, capped at the graph's 6
        ("HEIGHT", (20, 10), (4, 2)),
        ("SHORTER_SIDE", (10, 40), (6, 24)),
    ],
)
def test_target_sizes(mode, size, expected):
    assert images.target_size(*size, spec(resize=mode, resize_shorter_to=6)) == expected


def test_normalize_pad_and_layouts():
    pixels = np.full((4, 3, 3), 255, np.uint8)  # narrower than the graph: HEIGHT pads
    s = spec(resize="HEIGHT", scale=1 / 255, mean=[0.5], std=[0.5], pad_value=-9.0)
    out = images.prepare(pixels, s)
    assert out.shape == (3, 4, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, :3], 1.0)  # (1 - 0.5) / 0.5
    assert (out[:, :, 3:] == -9.0).all()
    nhwc = images.prepare(pixels, {**s, "layout": "NHWC"})
    np.testing.assert_array_equal(nhwc, out.transpose(1, 2, 0))
    flat = images.prepare(pixels, {**s, "layout": "FLAT"})
    np.testing.assert_array_equal(flat, nhwc.reshape(-1))
    centred = images.prepare(pixels, {**s, "pad": "CENTER"})
    assert (centred[:, :, 1:4] == 1.0).all() and (centred[:, :, 0] == -9.0).all()


def test_per_channel_mean_and_std():
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 10, 20, 30
    out = images.prepare(pixels, spec(mean=[1, 2, 3], std=[1, 2, 3]))
    assert out[:, 0, 0].tolist() == [9.0, 9.0, 9.0]


def test_shorter_side_then_centre_crop():
    pixels = np.zeros((8, 16, 1), np.uint8)
    pixels[:, 8:] = 200  # right half bright
    s = spec(
        color="L",
        height=4,
        width=4,
        resize="SHORTER_SIDE",
        resize_shorter_to=4,
        interpolation="NEAREST",
    )
    out = images.prepare(pixels, s)
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0.0, 0.0, 200.0, 200.0]


def test_raw_pixels_take_the_same_path():
    pixels = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.from_pixels(pixels, spec(color="BGR")), pixels[:, :, ::-1])
    grey = images.from_pixels(pixels[:, :, 0], spec())
    assert grey.shape == (4, 6, 3) and (grey[..., 0] == grey[..., 2]).all()
    with pytest.raises(InvalidEventError) as caught:
        images.from_pixels(np.zeros((2, 2, 4), np.uint8), spec())
    assert caught.value.reason == "wrong-tensor"


def test_an_image_smaller_than_the_crop_is_refused():
    s = spec(resize="NONE", height=8, width=8)
    with pytest.raises(InvalidEventError) as caught:
        images.prepare(np.zeros((4, 4, 3), np.uint8), s)
    assert caught.value.reason == "wrong-image-size"


def test_extreme_aspect_ratios_cost_what_the_output_costs():
    """A 1 x 4,000,000 line (12 KB as a PNG) would otherwise ask for 4,000,000 columns per
    output row in the resize, and a short side scaled up 256 times for a centre crop."""
    import tracemalloc

    line = RNG.integers(0, 256, (1, 4_000_000, 3), dtype=np.uint8)
    tracemalloc.start()
    for s in (
        spec(height=48, width=192, interpolation="OPENCV_LINEAR"),
        spec(height=48, width=192, resize="HEIGHT", interpolation="OPENCV_LINEAR"),
        spec(height=224, width=224, resize="SHORTER_SIDE", resize_shorter_to=256),
        spec(
            height=224,
            width=224,
            resize="SHORTER_SIDE",
            resize_shorter_to=256,
            interpolation="OPENCV_LINEAR",
        ),
    ):
        out = images.prepare(line, s)
        assert out.shape == (3, s["height"], s["width"])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_a_crop_window_equals_resizing_then_cropping():
    pixels = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    full = images.resize(pixels, (80, 120), "OPENCV_LINEAR")
    np.testing.assert_array_equal(
        images.resize(pixels, (80, 120), "OPENCV_LINEAR", (10, 20, 30, 40)), full[10:40, 20:60]
    )
    # both pass orders give the same pixels (to the rounding of the last bit)
    tall = RNG.integers(0, 256, (300, 7, 3), dtype=np.uint8)
    rows_first = images.resize(tall, (20, 9), "OPENCV_LINEAR")
    reference = _opencv_linear_reference(tall, 20, 9)
    assert np.abs(rows_first.astype(int) - reference).max() <= 1


def _opencv_linear_reference(pixels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """cv2.resize INTER_LINEAR's rule, pixel by pixel in float64."""
    height, width = pixels.shape[:2]
    out = np.zeros((out_h, out_w, pixels.shape[2]))
    for i in range(out_h):
        fy = (i + 0.5) * height / out_h - 0.5
        y = int(np.floor(fy))
        ay = 0.0 if y < 0 or y >= height - 1 else fy - y
        y = min(max(y, 0), height - 1)
        for j in range(out_w):
            fx = (j + 0.5) * width / out_w - 0.5
            x = int(np.floor(fx))
            ax = 0.0 if x < 0 or x >= width - 1 else fx - x
            x = min(max(x, 0), width - 1)
            y1, x1 = min(y + 1, height - 1), min(x + 1, width - 1)
            top = pixels[y, x] * (1 - ax) + pixels[y, x1] * ax
            bottom = pixels[y1, x] * (1 - ax) + pixels[y1, x1] * ax
            out[i, j] = top * (1 - ay) + bottom * ay
    return np.rint(out).astype(int)
