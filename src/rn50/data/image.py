"""The one image reader: how every part of rn50 turns an image file into 8-bit RGB pixels.

Training (every `data.decode` mode), `rn50 eval`, `data check`, `data prepare`, `rn50 predict`,
`rn50 app` and the Hugging Face Space read a file with the functions here, so they all see the
same pixels. The policy, applied in this order:

- orientation: the EXIF Orientation tag (0x0112, or XMP's tiff:Orientation where Pillow finds
  one), read from the header before the pixels are decoded, is applied (phones store photos
  sideways and tag them; a viewer shows them upright). Values other than 2..8 mean "as stored".
- grayscale and 1-bit (L, 1): the gray value in all three channels.
- 16-bit (I;16*, I): divided by 257 (65535 -> 255) and rounded; Pillow's convert() would clip
  at 255 and turn most of a 16-bit photo white. Floating point (F): values in 0..1 are scaled
  by 255, others taken as 0..255 and clipped.
- transparency (RGBA, RGBa, LA, La, PA, and a palette, grayscale or RGB image with a
  transparent colour, PNG's tRNS or GIF's): composited onto white. The colour stored under
  a transparent pixel is arbitrary (often black); white is what a viewer on a page shows.
- CMYK (Adobe's inverted JPEGs included), YCbCr, palette and every other mode: Pillow's
  convert("RGB"). ICC profiles are not applied anywhere.

This module imports only Pillow and numpy (no rn50, no torch): `rn50 export --space` copies it
verbatim beside the Space's inference.py.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

ORIENTATION_TAG = 0x0112
# Above the largest phone photos (108 MP sensors bin to 12 MP; 50 MP full-size files are rare).
# Decoding 100 MP to RGB takes ~300 MB; a 20000 x 20000 upload (400 MP, 1.2 GB) is refused by
# `open_image` (predict, app, Space). Training and data check use Pillow's limits instead.
MAX_PIXELS = 100_000_000
# Smaller than this is a mistake (a tracking pixel, an icon), not a photo to classify.
MIN_SIDE = 8

# Pillow's transpose for each EXIF orientation, as ImageOps.exif_transpose maps them.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SOI = b"\xff\xd8"  # every JPEG file starts with this marker
_APP1 = 0xE1  # the JPEG segment that holds EXIF (and XMP)
_SOS = 0xDA  # start of scan: the entropy-coded pixels follow, no more header segments


class ImageError(ValueError):
    """A file or upload that cannot be classified; the message says why in one line."""


class LargeImageWarning(UserWarning):
    """An image over Pillow's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, 89 MP by
    default) that is still read: raised in place of Pillow's DecompressionBombWarning, so that
    the caller, who knows the file's name, reports it in rn50's words."""


# ---------------------------------------------------------------------------------------------
# Opening and orientation


def open_pil(source: str | Path | bytes | BinaryIO | np.ndarray) -> Image.Image:
    """Image.open of a path, file object or bytes-like object (a uint8 numpy array too),
    header only (no pixels decoded).

    Pillow's DecompressionBombWarning (above Image.MAX_IMAGE_PIXELS) becomes a
    LargeImageWarning naming the size; DecompressionBombError (above twice the limit),
    UnidentifiedImageError and OSError propagate.
    """
    if not isinstance(source, (str, Path)) and not hasattr(source, "read"):
        source = io.BytesIO(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(source)
    check_large(*img.size)
    return img


def check_large(width: int, height: int) -> None:
    """Warn (LargeImageWarning) when width x height is over Pillow's decompression-bomb
    threshold, as Pillow itself would."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        warnings.warn(
            LargeImageWarning(
                f"{width}x{height} px ({width * height / 1e6:.0f} MP) is over Pillow's "
                f"decompression-bomb threshold of {limit / 1e6:.0f} MP; read anyway"
            ),
            stacklevel=2,
        )


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image, from its header; 1 when there is none,
    when the value is not 2..8, or when the EXIF block is broken (no reason to refuse pixels).

    Call it before decoding: it reads only what opening the file found. (Pillow's PNG reader
    would otherwise decode the whole image to look for an eXIf chunk after the pixels, which
    the PNG specification does not allow anyway; the base class method does not.)
    """
    try:
        value = Image.Image.getexif(img).get(ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def file_orientation(data) -> int:
    """The EXIF orientation (1..8) of an image file's bytes, without decoding pixels.

    A JPEG without an APP1 segment (where EXIF and XMP live) is answered from a scan of its
    segment markers (a few microseconds); every other file is opened with Pillow (header only)
    and read by `orientation`, so both answers are Pillow's.
    """
    head = memoryview(data)[:2].tobytes() if not isinstance(data, bytes) else data[:2]
    if head == _SOI and not _jpeg_has_app1(data):
        return 1
    try:
        with open_pil(data) as img:
            return orientation(img)
    except Exception:  # not an image: the decoder will say so
        return 1


def _jpeg_has_app1(data) -> bool:
    """True when a JPEG has an APP1 segment before its first scan (or its markers cannot be
    followed, so that Pillow decides)."""
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    n, i = len(buf), 2
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return True  # not a marker where one must be: let Pillow read it
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == _APP1:
            return True
        if marker == _SOS or marker == 0xD9:
            return False
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        i += 2 + ((buf[i + 2] << 8) | buf[i + 3])
    return False


def oriented_size(height: int, width: int, turn: int) -> tuple[int, int]:
    """(height, width) of a stored height x width image once orientation `turn` is applied:
    swapped for 5..8 (those turn the image by 90 degrees)."""
    return (width, height) if turn in (5, 6, 7, 8) else (height, width)


def orient(img: Image.Image, turn: int) -> Image.Image:
    """Apply EXIF orientation `turn` (1..8) to a PIL image: ImageOps.exif_transpose's pixels."""
    method = _TRANSPOSE.get(turn)
    return img if method is None else img.transpose(method)


def orient_array(pixels: np.ndarray, turn: int) -> np.ndarray:
    """Apply EXIF orientation `turn` to (H, W, C) or (H, W) pixels; a new C-contiguous array
    for 2..8 (the same pixels as `orient`), the input itself for 1."""
    if turn not in _TRANSPOSE:
        return pixels
    a = pixels
    if turn in (5, 6, 7, 8):
        a = a.swapaxes(0, 1)  # TRANSPOSE: out[y, x] = in[x, y]
    # After the transpose, each orientation is at most a flip of rows and/or columns.
    flip_rows, flip_cols = FLIPS[turn]
    return np.ascontiguousarray(a[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1])


# turn -> (flip rows, flip columns) after the transpose that 5..8 begin with; the one table of
# orientations, for numpy arrays here and for tensors on a device (rn50.data.gpu).
FLIPS = {
    2: (False, True),
    3: (True, True),
    4: (True, False),
    5: (False, False),
    6: (False, True),  # ROTATE_270 (90 degrees clockwise) = transpose, then mirror
    7: (True, True),
    8: (True, False),  # ROTATE_90 (90 degrees counter-clockwise) = transpose, then flip
}


# ---------------------------------------------------------------------------------------------
# Colour conversion


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB by the policy in this module's docstring (no orientation).

    Raises ImageError for a mode Pillow cannot convert.
    """
    return convert_rgb(img)[0]


def convert_rgb(img: Image.Image) -> tuple[Image.Image, str]:
    """(8-bit RGB image, note): the note says what was converted ("" when nothing or only a
    grayscale-to-RGB copy was), e.g. "CMYK converted to RGB". ImageError for an unsupported
    mode."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img, ""
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img).astype(np.float64)
        if mode == "F":
            a = a * 255.0 if a.max(initial=0.0) <= 1.0 else a
        else:
            a = a / 257.0  # the 16-bit range: 65535 -> 255
        gray = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))  # 2-D: "L"
        return gray.convert("RGB"), f"{_mode_name(mode)} scaled to 8-bit RGB"
    if "A" in mode or "a" in mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return (
            Image.alpha_composite(background, rgba).convert("RGB"),
            f"{_mode_name(mode)} flattened onto white",
        )
    try:
        rgb = img.convert("RGB")
    except Exception:
        raise ImageError(f"colour mode {mode} is not supported; save the image as RGB") from None
    return rgb, ("" if mode == "L" else f"{_mode_name(mode)} converted to RGB")


def _mode_name(mode: str) -> str:
    names = {"P": "palette", "PA": "palette+alpha", "LA": "grayscale+alpha", "1": "1-bit"}
    if mode.startswith("I;16") or mode == "I":
        return "16-bit"
    if mode == "F":
        return "floating-point"
    return names.get(mode, mode)


# ---------------------------------------------------------------------------------------------
# Readers


def load_rgb(source: str | Path | bytes | np.ndarray) -> Image.Image:
    """Decode a file (path or bytes) to an upright 8-bit RGB image: the reader of training's
    pil mode, of every mode's fallback for files libjpeg-turbo does not take, of `data check`'s
    fixed copy. Raises what Pillow raises for a file it cannot decode."""
    with open_pil(source) as img:
        turn = orientation(img)
        img.load()  # inside the `with`: an RGB image is returned as it is, not converted
        return orient(to_rgb(img), turn)


def _read_file(p: Path) -> bytes:
    """The bytes of a regular file, or ImageError saying what `p` is instead (a FIFO would
    block a read forever, a device never end it)."""
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise ImageError(f"no such file: '{p}'") from None
    except OSError as e:  # a link loop, a folder that cannot be entered
        raise ImageError(f"cannot read '{p}' ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        raise ImageError(f"'{p}' is {what}, not an image file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read '{p}' ({e.strerror or e})") from None


def open_image(source: str | Path | bytes | Image.Image) -> tuple[Image.Image, str]:
    """Check and decode a file path, bytes or PIL image into an upright RGB image, or raise
    ImageError (predict, the app and the Space).

    Returns (image, note); the note says what was converted ("" when nothing was). Refuses
    non-images, truncated files, images below MIN_SIDE px or above MAX_PIXELS, before decoding
    the pixels where the header tells. The pixels are `load_rgb`'s.
    """
    if isinstance(source, Image.Image):
        _check_size(*source.size)
        return convert_rgb(source)
    if isinstance(source, (str, Path)):
        data = _read_file(Path(source))
    else:
        data = bytes(source)
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Between Pillow's limit (89 MP) and ours (MAX_PIXELS, checked below) is fine here.
            warnings.simplefilter("ignore", LargeImageWarning)
            img = open_pil(data)
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ImageError(_too_large(pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(
            "not an image file Pillow can read (use JPEG, PNG, WebP, GIF, BMP or TIFF)"
        ) from None
    except Exception as e:  # a damaged header raises whatever its plugin raises
        raise ImageError(f"the image header is damaged ({first_line(e)})") from None
    _check_size(*img.size)
    turn = orientation(img)
    try:
        img.load()  # decode now: a truncated or corrupt file fails here, not in the model
    except Exception as e:
        raise ImageError(f"the image is truncated or corrupt ({first_line(e)})") from None
    rgb, note = convert_rgb(img)
    return orient(rgb, turn), note


def first_line(e: Exception) -> str:
    """An exception's message cut to its first line and 160 characters (its type's name when
    it has no message): what a one-line error quotes."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _too_large(pixels: str) -> str:
    return (
        f"the image is too large ({pixels}); the limit is {MAX_PIXELS // 1_000_000} megapixels, "
        f"so downscale it first"
    )


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(_too_large(f"{width}x{height} px"))
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"the image is {width}x{height} px; at least {MIN_SIDE}x{MIN_SIDE} px is needed"
        )
