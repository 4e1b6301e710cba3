"""JPEG decoding for log readers: bytes -> (H, W, 3) uint8 RGB, or a LogError saying why not.

libjpeg happily returns a half-grey image for a truncated file (it only warns "premature end of
JPEG file"), which would put silent garbage into training batches. So a JPEG must end with its
EOI marker (FF D9) and PIL must decode it without its truncated-image tolerance.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from drivegen.errors import LogError

__all__ = ["decode_jpeg"]

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


def decode_jpeg(data: bytes, log: str, what: str) -> np.ndarray:
    """Decode `data`; `what` names the image in errors (file path, or segment/frame/camera)."""
    if len(data) < 4 or not data.startswith(_SOI):
        raise LogError(log, f"{what} is not a JPEG ({len(data)} bytes, no SOI marker); re-copy the image")
    # Some encoders pad after EOI; accept trailing zero bytes.
    if not data.rstrip(b"\x00").endswith(_EOI):
        raise LogError(log, f"{what} is a truncated JPEG (no end-of-image marker, {len(data)} bytes); re-copy it")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise LogError(log, f"{what} does not decode as a JPEG ({exc}); re-copy the image") from None
    return np.asarray(rgb, dtype=np.uint8)
