"""Images: decoded with Pillow (or taken as raw pixels), then colour mode, resize, crop,
scale, mean and std, pad and layout, in that order, as an ImageSpec says.

Decoding is the risky step: the bytes come from anyone who can write to ``requests``.
Only the formats the spec names are tried (Pillow parses nothing else), the size an image
declares in its header is checked against ``max_pixels`` before a pixel is decoded (a
100,000 x 100,000 PNG of a few KB would otherwise claim 30 GB), and a truncated or corrupt
file is refused with the decoder's reason. What one image can take is therefore bounded:
``max_pixels`` x 4 bytes while it is decoded, then the graph's height x width.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np

from modelstream.contracts.records import ImageSpec
from modelstream.errors import InvalidEventError

KNOWN_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"})


def decode(data: bytes, spec: ImageSpec) -> np.ndarray:
    """Encoded bytes as uint8 pixels [H, W, C] in the spec's colour mode (C = 3, or 1 for
    L); ``invalid-image`` or ``image-too-large`` with the reason."""
    from PIL import Image, UnidentifiedImageError

    formats = [f for f in spec["formats"] if f in KNOWN_FORMATS] or ["PNG", "JPEG"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
            width, height = image.size
            if width <= 0 or height <= 0:
                raise InvalidEventError("invalid-image", f"image declares {width}x{height}")
            if width * height > spec["max_pixels"]:
                raise InvalidEventError(
                    "image-too-large",
                    f"image declares {width}x{height} pixels; at most {spec['max_pixels']} "
                    "are decoded",
                )
            image.load()
            converted = image.convert("L" if spec["color"] == "L" else "RGB")
    except InvalidEventError:
        raise
    except UnidentifiedImageError:
        raise InvalidEventError(
            "invalid-image", f"not an image in an accepted format ({', '.join(formats)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidEventError("image-too-large", str(exc)[:300]) from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
        raise InvalidEventError(
            "invalid-image", f"the image does not decode: {type(exc).__name__}: {exc}"[:300]
        ) from None
    pixels = np.asarray(converted, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels[:, :, ::-1] if spec["color"] == "BGR" else pixels


def from_pixels(pixels: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Raw uint8 pixels [H, W] (grey) or [H, W, 3] (RGB) in the spec's colour mode."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise InvalidEventError(
            "wrong-tensor", f"raw pixels are UINT8 [H, W] or [H, W, 3], got {list(pixels.shape)}"
        )
    if pixels.ndim == 3 and pixels.shape[2] not in (1, 3):
        raise InvalidEventError("wrong-tensor", f"raw pixels have {pixels.shape[2]} channels")
    if pixels.shape[0] * pixels.shape[1] > spec["max_pixels"] or 0 in pixels.shape[:2]:
        raise InvalidEventError("image-too-large", f"{list(pixels.shape)} pixels")
    grey = pixels.ndim == 2 or pixels.shape[2] == 1
    if spec["color"] == "L":
        if grey:
            return pixels.reshape(pixels.shape[0], pixels.shape[1], 1)
        # ITU-R 601-2 luma, as Pillow's convert("L")
        luma = pixels.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    rgb = (
        np.repeat(pixels.reshape(pixels.shape[0], pixels.shape[1], 1), 3, axis=2)
        if grey
        else pixels
    )
    return rgb[:, :, ::-1] if spec["color"] == "BGR" else rgb


def target_size(height: int, width: int, spec: ImageSpec) -> tuple[int, int]:
    """(height, width) an image of this size is resized to, before crop and pad."""
    mode, h, w = spec["resize"], spec["height"], spec["width"]
    if mode == "NONE":
        return height, width
    if mode == "STRETCH":
        return h, w
    if mode == "FIT":
        ratio = min(h / height, w / width)
        return max(1, min(h, round(height * ratio))), max(1, min(w, round(width * ratio)))
    if mode == "HEIGHT":  # width follows the aspect ratio, capped at the graph's width
        return h, max(1, min(w, math.ceil(h * width / height)))
    shorter = spec["resize_shorter_to"] or min(h, w)  # SHORTER_SIDE
    ratio = shorter / min(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def resize(
    pixels: np.ndarray,
    size: tuple[int, int],
    interpolation: str,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """uint8 [H, W, C] resized to ``size`` with Pillow's filters or OpenCV's INTER_LINEAR
    rule; with ``window`` (top, left, height, width) only that part of the result is
    computed (a centre crop of an image whose other side would grow very long)."""
    top, left, h, w = window or (0, 0, *size)
    if pixels.shape[:2] == size:
        return pixels[top : top + h, left : left + w]
    if interpolation == "OPENCV_LINEAR":
        return _linear_on_centres(pixels, size, (top, left, h, w))
    from PIL import Image

    filters = {
        "NEAREST": Image.Resampling.NEAREST,
        "BILINEAR": Image.Resampling.BILINEAR,
        "BICUBIC": Image.Resampling.BICUBIC,
        "LANCZOS": Image.Resampling.LANCZOS,
    }
    height, width, channels = pixels.shape
    sy, sx = height / size[0], width / size[1]
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
    out = np.asarray(image.resize((w, h), filters[interpolation], box=box), dtype=np.uint8)
    return out.reshape(h, w, channels)


def _linear_on_centres(
    pixels: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int]
) -> np.ndarray:
    """Bilinear interpolation between the two nearest source pixel centres, without
    antialiasing, rounded to uint8: what ``cv2.resize(..., INTER_LINEAR)`` computes (up to
    its fixed-point rounding), for models trained on OpenCV's resize. The axis whose pass
    leaves the smaller intermediate goes first, so a 1 x 4,000,000 line costs a row, not
    4,000,000 columns per output row."""
    height, width = pixels.shape[:2]
    top, left, h, w = window

    def taps(n_in: int, n_out: int, start: int, count: int) -> tuple[Any, Any, Any]:
        centre = (np.arange(start, start + count, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        low = np.floor(centre)
        frac = centre - low
        low = low.astype(np.intp)
        frac[low < 0] = 0.0
        frac[low >= n_in - 1] = 0.0
        low = np.clip(low, 0, n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), frac.astype(np.float32)

    y0, y1, fy = taps(height, size[0], top, h)
    x0, x1, fx = taps(width, size[1], left, w)
    wy, wx = fy[:, None, None], fx[None, :, None]
    if h * width <= height * w:  # rows first
        rows = pixels[y0].astype(np.float32) * (1 - wy) + pixels[y1].astype(np.float32) * wy
        out = rows[:, x0] * (1 - wx) + rows[:, x1] * wx
    else:
        cols = pixels[:, x0].astype(np.float32) * (1 - wx) + pixels[:, x1].astype(np.float32) * wx
        out = cols[y0] * (1 - wy) + cols[y1] * wy
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def prepare(pixels: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Decoded pixels [H, W, C] as one graph row: float32 in the spec's layout, without the
    batch axis ([C, H, W], [H, W, C] or [H * W * C])."""
    height, width = pixels.shape[:2]
    h, w = spec["height"], spec["width"]
    target = target_size(height, width, spec)
    if spec["resize"] == "SHORTER_SIDE":
        if target[0] < h or target[1] < w:
            raise InvalidEventError(
                "wrong-image-size", f"image of {height}x{width} resized is smaller than {h}x{w}"
            )
        window = ((target[0] - h) // 2, (target[1] - w) // 2, h, w)
        resized = resize(pixels, target, spec["interpolation"], window)
    else:
        resized = resize(pixels, target, spec["interpolation"])
        if spec["resize"] == "NONE" and resized.shape[:2] != (h, w):
            resized = _centre_crop(resized, h, w)
    values = resized.astype(np.float32)
    if spec["scale"] != 1.0:
        values *= np.float32(spec["scale"])
    channels = values.shape[2]
    if spec["mean"]:
        values -= per_channel(spec["mean"], channels, "mean")
    if spec["std"]:
        values /= per_channel(spec["std"], channels, "std")
    if values.shape[:2] != (h, w):
        values = _pad(values, h, w, spec)
    if spec["layout"] == "NCHW":
        return np.ascontiguousarray(values.transpose(2, 0, 1))
    if spec["layout"] == "FLAT":
        return values.reshape(-1)
    return values


def _centre_crop(pixels: np.ndarray, h: int, w: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if height < h or width < w:
        raise InvalidEventError(
            "wrong-image-size", f"image of {height}x{width} is smaller than the model's {h}x{w}"
        )
    top, left = (height - h) // 2, (width - w) // 2
    return pixels[top : top + h, left : left + w]


def _pad(values: np.ndarray, h: int, w: int, spec: ImageSpec) -> np.ndarray:
    height, width, channels = values.shape
    if height > h or width > w:
        raise InvalidEventError(
            "wrong-image-size", f"image of {height}x{width} is larger than the model's {h}x{w}"
        )
    out = np.full((h, w, channels), spec["pad_value"], dtype=np.float32)
    top, left = ((h - height) // 2, (w - width) // 2) if spec["pad"] == "CENTER" else (0, 0)
    out[top : top + height, left : left + width] = values
    return out


def per_channel(values: list[float], channels: int, what: str) -> np.ndarray:
    if len(values) not in (1, channels):
        raise InvalidEventError(
            "invalid-spec", f"{what} has {len(values)} values for {channels} channels"
        )
    return np.asarray(values, dtype=np.float32)
