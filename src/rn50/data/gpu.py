"""The GPU data path (`data.decode: gpu`): workers read bytes, the training device decodes.

A worker reads a file, parses its JPEG header for the image size and EXIF orientation (the
device decoders ignore EXIF) and draws the crop box and flip on the upright size there (from
the per-sample seed, with the very calls the CPU paths make, so the boxes equal theirs). The
main process then decodes the whole batch on the device with one
`torchvision.io.decode_jpeg(list, device=...)` call (nvJPEG on CUDA), turns each image upright
(`orient_tensor`: a transpose and flips, exact, as views), and crops, resizes (antialiased
bilinear, like PIL's) and flips the whole batch at once there (`rn50.data.resample`: one copy
per image into a padded buffer, then two batched matrix products). The batch leaves as uint8
(N, 3, R, R) on the device; `rn50.data.batch.to_device` then only normalizes it (its copy to
the device is a no-op).

The same code runs with device cpu (torchvision's libjpeg decoder), which is how it is tested
without a GPU.

Files the device decoder does not take: a worker decodes those with the CPU path
(rn50.data.decode) instead, and sends the finished crop: CMYK and YCCK JPEGs, PNG and other
formats (found from the header). A file whose header passes but whose data the device
decoder rejects (truncated, corrupt) is retried alone and then with PIL on the host; when
that fails too it is left out of its batch and named in `Batch.bad`, as on the CPU path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch

from rn50.data.ahead import ahead
from rn50.data.augment import auto_augment
from rn50.data.decode import (
    Box,
    TrainDraws,
    crop_drawn,
    decode,
    probe,
)
from rn50.data.device_decoders import decode_batch_on, decode_host
from rn50.data.image import FLIPS, file_orientation, orient_array, oriented_size
from rn50.data.loader import Batch
from rn50.data.resample import place_batch
from rn50.data.transforms import eval_resize_size


@dataclass
class Encoded:
    """One sample as a worker hands it over: the bytes and what to do with them on the device,
    or (for a file the device decoder does not take) the finished uint8 (3, R, R) crop."""

    data: torch.Tensor | None  # uint8 file bytes, for the device decoder
    image: torch.Tensor | None  # finished crop, decoded on the CPU
    box: Box  # region of the source image to use (top, left, h, w)
    size: tuple[int, int]  # (h, w) the box is resized to
    crop: Box | None  # then this region of the resized image (validation's centre crop)
    flip: bool
    orientation: int = 1  # EXIF orientation (1..8) to apply to the decoded bytes first
    augment: tuple[str, int] | None = None  # data.auto_augment policy and seed, for the device


class EncodedBatch:
    """A worker's batch: samples to decode on the device, their labels and files."""

    def __init__(self, items: list[tuple[Encoded | None, int, str]]):
        good = [(enc, label, path) for enc, label, path in items if enc is not None]
        self.samples = [enc for enc, _, _ in good]
        self.targets = torch.tensor([label for _, label, _ in good], dtype=torch.long)
        self.paths = [path for _, _, path in good]
        self.bad = [path for enc, _, path in items if enc is None]


def collate_encoded(items: list[tuple[Encoded | None, int, str]]) -> EncodedBatch:
    """The DataLoader's collate_fn for the GPU path: no stacking (the images differ in size)."""
    return EncodedBatch(items)


def eval_geometry(height: int, width: int, resolution: int, crop_ratio: float):
    """EvalTransform's geometry: the resized (h, w) with the short side resolution/crop_ratio
    (the long side truncated, as torchvision's Resize does), and the centred crop box in it."""
    short_side = eval_resize_size(resolution, crop_ratio)
    if width <= height:
        size = (int(short_side * height / width), short_side)
    else:
        size = (short_side, int(short_side * width / height))
    top = int(round((size[0] - resolution) / 2.0))
    left = int(round((size[1] - resolution) / 2.0))
    return size, (top, left, resolution, resolution)


class GpuTrainPrep(TrainDraws):
    """Worker side of training: file bytes -> Encoded (crop box, flip and the data.auto_augment
    policy's seed drawn here, in the CPU paths' order; the device applies the policy)."""

    def __call__(self, data: np.ndarray) -> Encoded:
        d = self.draw(data)  # the CPU paths' draws, in their order
        augment = None if self.augment is None else self.augment.draw()
        size = (self.resolution, self.resolution)
        if d.direct:
            data = torch.from_numpy(data)
            return Encoded(data, None, d.box, size, None, d.flip, d.turn, augment)
        # Not for the device decoder: the CPU path's remaining steps, here in the worker.
        image = crop_drawn(data, d, self.resolution).contiguous()
        return Encoded(None, image, d.box, size, None, d.flip, augment=augment)


class GpuEvalPrep:
    """Worker side of validation: file bytes -> Encoded (resize short side, centre crop)."""

    def __init__(self, resolution: int, crop_ratio: float = 0.875):
        self.resolution, self.crop_ratio = resolution, crop_ratio

    def __call__(self, data: np.ndarray) -> Encoded:
        height, width, direct = probe(data)
        turn = file_orientation(data)
        upright = oriented_size(height, width, turn)
        size, crop = eval_geometry(*upright, self.resolution, self.crop_ratio)
        box = (0, 0, *upright)
        if direct:
            return Encoded(torch.from_numpy(data), None, box, size, crop, False, turn)
        pixels = orient_array(decode(data, height, width, False), turn)
        pixels = torch.from_numpy(pixels).permute(2, 0, 1)
        return Encoded(None, place(pixels, box, size, crop, False), box, size, crop, False)


def place(
    pixels: torch.Tensor, box: Box, size: tuple[int, int], crop: Box | None, flip: bool
) -> torch.Tensor:
    """uint8 (3, H, W) on any device -> the sample's uint8 (3, R, R): crop `box`, resize to
    `size` (antialiased bilinear, as PIL and the CPU path do), crop `crop`, flip. One image
    of `rn50.data.resample.place_batch`, which a batch takes at once."""
    return place_batch([pixels], [box], [size], [crop], [flip])[0]


def orient_tensor(pixels: torch.Tensor, turn: int) -> torch.Tensor:
    """Apply EXIF orientation `turn` (1..8) to uint8 (C, H, W) pixels on any device: the pixels
    of rn50.data.image.orient_array (a transpose for 5..8, then flips; exact)."""
    if turn not in FLIPS:
        return pixels
    if turn in (5, 6, 7, 8):
        pixels = pixels.transpose(-2, -1)
    dims = tuple(dim for dim, flip in zip((-2, -1), FLIPS[turn], strict=True) if flip)
    return pixels.flip(dims) if dims else pixels


def decode_jpegs(
    datas: Sequence[torch.Tensor], device: torch.device, decoder: str = "torchvision"
) -> list[torch.Tensor | None]:
    """Decode JPEG bytes to uint8 (3, H, W) RGB on `device` with `decoder`
    (rn50.data.device_decoders; torchvision's decode_jpeg by default), in one batched call;
    a file it rejects is decoded with PIL on the host and copied over; None where nothing can.

    On CUDA the decoder is called with a side stream of rn50's as the current stream.
    torchvision's nvJPEG decoder allocates its outputs on the current stream and then writes
    them from a stream of its own, without waiting for the current one (pytorch/vision#9606):
    on the training stream it can be handed memory that kernels still queued there (the
    step before) are going to read, and overwrite it first. On the side stream its outputs
    can only reuse earlier outputs' memory, which the allocator keeps until the training
    stream has done with them (`record_stream`).
    """
    if not datas:
        return []
    if device.type != "cuda":
        return _decode_jpegs(datas, device, decoder)
    device = _indexed(device)
    training = torch.cuda.current_stream(device)
    side = _decode_stream(device)
    with torch.cuda.stream(side):
        out = _decode_jpegs(datas, device, decoder)
    training.wait_stream(side)
    for image in out:
        if image is not None:
            image.record_stream(training)
    return out


_DECODE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _indexed(device: torch.device) -> torch.device:
    """A CUDA `device` with its index: one named without is the current device, which is per
    thread (a new thread's starts at GPU 0), so it is fixed where the training loop runs."""
    if device.index is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device())


def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    """rn50's side stream on `device` (a CUDA device with its index), made once."""
    index = device.index
    if index not in _DECODE_STREAMS:
        _DECODE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _DECODE_STREAMS[index]


def _decode_jpegs(
    datas: Sequence[torch.Tensor], device: torch.device, decoder: str
) -> list[torch.Tensor | None]:
    out = decode_batch_on(decoder, datas, device)
    for i, image in enumerate(out):
        if image is None:  # what the device decoder rejects: PIL on the host, or None
            host = decode_host(datas[i])
            out[i] = None if host is None else host.to(device)
    return out


def decode_batch(batch: EncodedBatch, device: torch.device, decoder: str = "torchvision") -> Batch:
    """An EncodedBatch -> Batch(uint8 (N, 3, R, R) on `device`, targets, bad files).

    The JPEGs are decoded in one call (`decode_jpegs`), then cropped, resized and flipped
    together (`place_batch`: two batched matrix products, not a few kernels per image)."""
    samples = batch.samples
    jpeg_at = [i for i, s in enumerate(samples) if s.data is not None]
    decoded = decode_jpegs([samples[i].data for i in jpeg_at], device, decoder)
    pixels = {i: image for i, image in zip(jpeg_at, decoded, strict=True) if image is not None}
    rejected = [i for i in jpeg_at if i not in pixels]
    keep = [i for i, s in enumerate(samples) if s.data is None or i in pixels]
    bad = list(batch.bad) + [batch.paths[i] for i in rejected]
    if not keep:
        return Batch(
            torch.empty(0, 3, 0, 0, dtype=torch.uint8, device=device),
            torch.empty(0, dtype=torch.long),
            bad,
        )
    placed = None
    if pixels:
        chosen = [samples[i] for i in pixels]
        placed = place_batch(
            [orient_tensor(image, samples[i].orientation) for i, image in pixels.items()],
            [s.box for s in chosen],
            [s.size for s in chosen],
            [s.crop for s in chosen],
            [s.flip for s in chosen],
        )
    if len(pixels) == len(keep):
        images = placed  # the usual batch: every file decoded on the device, already in order
    else:  # files decoded by the workers (CMYK, PNG) go between the device's, in order
        rows = {i: placed[n] for n, i in enumerate(pixels)}
        images = torch.stack(
            [rows[i] if i in rows else samples[i].image.to(device, non_blocking=True) for i in keep]
        )
    for row, i in enumerate(keep):
        if samples[i].augment is not None:
            images[row] = auto_augment(images[row], *samples[i].augment)
    return Batch(images, batch.targets[keep], bad)


THREAD = "rn50-decode"  # the decode thread's name (in stack dumps, py-spy)


class DeviceDecodeLoader:
    """A DataLoader of EncodedBatches that yields Batches decoded on `device`, `ahead` batches
    ahead in a background thread (rn50.data.ahead; 0: between the training loop's steps).

    It looks like the DataLoader to the training loop (`sampler`, `len`, iteration), so the
    engine needs no branch for this mode.

    On CUDA the thread decodes with a stream of its own current, so the device decodes the
    next batch while the training stream runs this step. A batch is handed over with the
    training stream made to wait for that work, and its images marked as used there, so their
    memory is not handed out again before the step that reads them has run.
    """

    def __init__(self, loader, device: torch.device, ahead: int = 0, decoder: str = "torchvision"):
        self.loader, self.device, self.ahead, self.decoder = loader, device, ahead, decoder

    @property
    def sampler(self):
        """The wrapped loader's sampler (set_epoch, resume)."""
        return self.loader.sampler

    @property
    def dataset(self):
        """The wrapped loader's dataset."""
        return self.loader.dataset

    @property
    def batch_size(self):
        """Images per batch, as the wrapped loader's."""
        return self.loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        # The DataLoader's iterator is made here, in the caller's thread: it reads the
        # sampler's epoch and start now, and starts its workers from the main thread.
        batches = iter(self.loader)
        device = self.device
        if device.type != "cuda" or self.ahead <= 0:
            yield from ahead(
                batches, lambda b: decode_batch(b, device, self.decoder), self.ahead, name=THREAD
            )
            return
        device = _indexed(device)
        stream = torch.cuda.Stream(device=device)

        def context():
            stack = ExitStack()
            stack.enter_context(torch.cuda.device(device))
            stack.enter_context(torch.cuda.stream(stream))
            return stack

        def work(encoded: EncodedBatch) -> tuple[Batch, torch.cuda.Event]:
            batch = decode_batch(encoded, device, self.decoder)
            done = torch.cuda.Event()
            done.record(stream)
            return batch, done

        for batch, done in ahead(batches, work, self.ahead, context, THREAD):
            training = torch.cuda.current_stream(device)
            training.wait_event(done)
            batch.images.record_stream(training)
            yield batch
