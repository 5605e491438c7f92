"""PNG and base64 encodings for images and masks (the pyfunc's and ``to_dict``'s wire format)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def encode_png(array: np.ndarray) -> bytes:
    """``uint8 [H,W,3]`` / ``[H,W]`` or ``bool [H,W]`` (stored as 0/255 greyscale) → PNG bytes."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → ``uint8 [H,W,3]`` for colour images, ``uint8 [H,W]`` for greyscale."""
    image = Image.open(io.BytesIO(data))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image)


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def from_base64(text: str) -> bytes:
    return base64.b64decode(text, validate=False)


def mask_to_b64png(mask: np.ndarray) -> str:
    return to_base64(encode_png(np.asarray(mask, dtype=bool)))


def b64png_to_mask(text: str) -> np.ndarray:
    """Inverse of ``mask_to_b64png``: ``bool [H,W]``."""
    return decode_png(from_base64(text)) > 127
