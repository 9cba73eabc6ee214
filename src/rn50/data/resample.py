"""Crop, resize and flip a whole batch of differently sized images in a few kernels.

An antialiased bilinear resize is separable: each output row is a weighted sum of input rows,
each output column one of input columns. So for one image X (H, W) the resized crop is
Wy @ X @ Wx^T, with Wy (R, H) and Wx (R, W) the filter weights. The crop box shifts the
weights, a centre crop after the resize keeps some of their rows, and a horizontal flip
reverses the rows of Wx; so the crop, the resize, the centre crop and the flip are all in
two weight matrices per image. For a batch, the images (their boxes only) are copied into one
zero-padded float buffer and Wy, Wx for every image are built at once: two batched matrix
products then do every image's crop, resize and flip together, where a loop over images
(`F.interpolate` per image) launches several kernels for each.

The weights are those of PIL's and torch's antialiased bilinear filter (PIL's
`ImagingResample`; `F.interpolate(..., mode="bilinear", antialias=True)`, whose
`_compute_indices_weights_aa` follows PIL): for output index i of a resize from `length` to
`size`, scale = length / size, centre c = scale * (i + 0.5), and input index j weighs
max(0, 1 - |j + 0.5 - c| / max(scale, 1)), the weights of a row normalized to sum 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Box = tuple[int, int, int, int]  # (top, left, height, width)

# Padded elements per chunk (float32: 256 MiB). A batch whose boxes pad to more is split into
# chunks of boxes of similar size, so one large box does not pad every other image to it.
CHUNK_ELEMENTS = 1 << 26


def aa_weights(
    lengths: Sequence[int],
    sizes: Sequence[int],
    offsets: Sequence[int],
    out_len: int,
    in_len: int,
    device: torch.device,
) -> torch.Tensor:
    """float32 (N, out_len, in_len): row i of matrix n holds the weights that make output index
    offsets[n] + i of an antialiased bilinear resize of lengths[n] input pixels to sizes[n]
    (PIL's filter; the module docstring gives the formula). Columns at and past lengths[n]
    weigh 0, so inputs may be zero-padded to in_len."""

    def column(values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)[:, None, None]

    lengths_t, sizes_t = column(lengths), column(sizes)
    i = torch.arange(out_len, dtype=torch.float32, device=device)[None, :, None] + column(offsets)
    j = torch.arange(in_len, dtype=torch.float32, device=device)[None, None, :]
    scale = lengths_t / sizes_t
    support = scale.clamp(min=1.0)  # downscaling widens the filter by the scale (antialias)
    centre = scale * (i + 0.5)
    weights = (1.0 - (j + 0.5 - centre).abs() / support).clamp_(min=0.0)
    weights = weights * (j < lengths_t)
    return weights / weights.sum(-1, keepdim=True)


def place_batch(
    pixels: Sequence[torch.Tensor],
    boxes: Sequence[Box],
    sizes: Sequence[tuple[int, int]],
    crops: Sequence[Box | None],
    flips: Sequence[bool],
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Each image's resized crop, as one uint8 (N, 3, R, R') tensor on the images' device.

    pixels[n] is uint8 (3, H, W) (any strides: an upright view is fine); the sample is its
    region boxes[n] resized to sizes[n] (h, w) with PIL's antialiased bilinear filter, then
    the region crops[n] of that (None: all of it), then mirrored left-right where flips[n].
    Every sample must come out the same (R, R') size (ValueError otherwise). Rounded to the
    nearest level: against `F.interpolate`'s float kernel on each image alone it differs by
    at most one level, from the order of the sums.
    """
    if not pixels:
        raise ValueError("place_batch needs at least one image")
    out_sizes = {
        (c[2], c[3]) if c is not None else tuple(s) for s, c in zip(sizes, crops, strict=True)
    }
    if len(out_sizes) != 1:
        raise ValueError(f"a batch's samples must come out one size, got {sorted(out_sizes)}")
    ((out_h, out_w),) = out_sizes
    device = pixels[0].device
    out = torch.empty(len(pixels), 3, out_h, out_w, dtype=torch.uint8, device=device)
    for chunk in _chunks(boxes, chunk_elements):
        out[torch.tensor(chunk, device=device)] = _place_chunk(
            [pixels[k] for k in chunk],
            [boxes[k] for k in chunk],
            [sizes[k] for k in chunk],
            [crops[k] or (0, 0, out_h, out_w) for k in chunk],
            [flips[k] for k in chunk],
            (out_h, out_w),
        )
    return out


def _place_chunk(pixels, boxes, sizes, crops, flips, out_size) -> torch.Tensor:
    """place_batch for one chunk: uint8 (n, 3, R, R'), in the chunk's order."""
    device = pixels[0].device
    height = max(b[2] for b in boxes)
    width = max(b[3] for b in boxes)
    # zeros, not empty: the padding weighs 0, and 0 * NaN (garbage memory) would be NaN.
    x = torch.zeros(len(pixels), 3, height, width, dtype=torch.float32, device=device)
    for row, (image, (top, left, h, w)) in enumerate(zip(pixels, boxes, strict=True)):
        x[row, :, :h, :w].copy_(image[:, top : top + h, left : left + w])  # one kernel each
    wy, wx = (  # axis 0: rows (box heights, crop tops); axis 1: columns
        aa_weights(
            [b[2 + axis] for b in boxes],
            [s[axis] for s in sizes],
            [c[axis] for c in crops],
            out_size[axis],
            (height, width)[axis],
            device,
        )
        for axis in (0, 1)
    )
    flip = torch.tensor([bool(f) for f in flips], device=device)[:, None, None]
    wx = torch.where(flip, wx.flip(1), wx)  # a mirrored output is Wx's rows reversed
    y = wy.unsqueeze(1) @ x @ wx.transpose(1, 2).unsqueeze(1)  # (n, 3, R, R')
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _chunks(boxes: Sequence[Box], limit: int) -> list[list[int]]:
    """Sample indices in chunks whose zero-padded buffer (n x 3 x max h x max w) stays within
    `limit` elements (a box larger than that alone in its chunk); boxes of similar height
    are grouped, so little of each buffer is padding."""
    order = sorted(range(len(boxes)), key=lambda k: (boxes[k][2], boxes[k][3]))
    chunks: list[list[int]] = []
    current: list[int] = []
    height = width = 0
    for k in order:
        h, w = max(height, boxes[k][2]), max(width, boxes[k][3])
        if current and (len(current) + 1) * 3 * h * w > limit:
            chunks.append(current)
            current, h, w = [], boxes[k][2], boxes[k][3]
        current.append(k)
        height, width = h, w
    chunks.append(current)
    return chunks
