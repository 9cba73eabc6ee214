"""Where one image's time goes in the `cpu` data mode: decoding and resampling, per stage.

    .venv/bin/python benchmarks/crop_stages.py [--images 256] [--sizes 224,160,128] [--repeats 5]

On ImageNet-like files (rn50.data.photos, 500x375 quality 90), one thread, the crop boxes
RandomResizedCrop draws for seeds 0..N-1. Per output size, over the boxes for which
`reduction` picks a DCT scale of 1/2 or less, the median over --repeats of the mean time
per image of:

- decode full: simplejpeg at full scale (what those boxes would cost without scaling);
- decode scaled: at the scale `reduction` picks;
- resample from full: torch's uint8 antialias kernel from the full-scale decode;
- resample from scaled: the same from the scaled decode, the box rounded to its pixels
  (`scaled_box`: what the `cpu` mode does);
- PIL from scaled: PIL's resize of the exact fractional box from the scaled decode (what
  the `cpu` mode did before, for comparison).
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from rn50.data import decode
from rn50.data.photos import write_imagenet_like


def per_image(fn, items, repeats: int) -> float:
    """Median over `repeats` of the mean microseconds of fn(*item) over `items`."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(*item)
        runs.append((time.perf_counter() - start) / len(items) * 1e6)
    return statistics.median(runs)


def pil_exact(pixels: np.ndarray, box, size: int, full) -> np.ndarray:
    top, left, h, w = box
    fy, fx = pixels.shape[0] / full[0], pixels.shape[1] / full[1]
    region = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR, box=region))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sizes", default="224,160,128")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_imagenet_like(tmp, args.images, classes=1)
        datas = [decode.read_bytes(str(p)) for p in sorted(root.rglob("*.JPEG"))]
    files = []  # (bytes, height, width, direct, box)
    for seed, data in enumerate(datas):
        height, width, direct = decode.probe(data)
        torch.default_generator.manual_seed(seed)
        files.append((data, height, width, direct, decode.sample_crop(height, width)))
    print(f"{len(files)} files, microseconds per image (median of {args.repeats} means)")
    print(
        "size | boxes decoded scaled | decode full | decode scaled | resample from full"
        " | resample from scaled, rounded box | PIL from scaled, exact box"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        full, scaled, boxes = [], [], []  # decode arguments at both scales, and the crops
        for data, height, width, direct, box in files:
            reduce = decode.reduction(box[2], box[3], size, size)
            if reduce > 1:
                full.append((data, height, width, direct))
                scaled.append((data, height, width, direct, reduce))
                boxes.append((box, size, (height, width)))
        if not scaled:
            print(f"{size} | 0 of {len(files)} | - | - | - | - | -")
            continue
        from_full = [(decode.decode(*f), *b) for f, b in zip(full, boxes, strict=True)]
        from_small = [(decode.decode(*f), *b) for f, b in zip(scaled, boxes, strict=True)]
        cells = [
            per_image(decode.decode, full, args.repeats),
            per_image(decode.decode, scaled, args.repeats),
            per_image(decode.resized_crop, from_full, args.repeats),
            per_image(decode.resized_crop, from_small, args.repeats),
            per_image(pil_exact, from_small, args.repeats),
        ]
        print(f"{size} | {len(scaled)} of {len(files)} | " + " | ".join(f"{c:.0f}" for c in cells))


if __name__ == "__main__":
    main()
