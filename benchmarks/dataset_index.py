"""How long a run's start spends finding the images of an ImageNet-sized dataset.

    .venv/bin/python benchmarks/dataset_index.py /tmp/dp/big [--repeats 3]

Makes (once) a synthetic tree in the ImageNet ImageFolder layout under the given folder:
1,000 class folders with 1,281,167 train and 50,000 val empty .JPEG files. Then times,
median of --repeats: `find_dataset` (listing every folder, what a start without the cache
does) and `load_dataset_index` reading the cache that its first call wrote (2,002 folder
stats and one JSON file). The listing is timed with the folders' metadata in the page cache
(the tree was just made or listed); a cold cache or a network file system lists slower.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

from rn50.data.index_cache import cache_path, load_dataset_index
from rn50.data.layout import find_dataset

SPLITS = {"train": 1_281_167, "val": 50_000}
CLASSES = 1000


def make_tree(root: Path) -> None:
    if (root / "val" / f"n{CLASSES - 1:08d}").is_dir():
        return
    for split, total in SPLITS.items():
        base, extra = divmod(total, CLASSES)
        for c in range(CLASSES):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(base + (c < extra)):
                os.close(os.open(folder / f"n{c:08d}_{i}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
    time.sleep(3)  # the index cache is written only for folders that settled


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    make_tree(args.root)
    cache_path(args.root).unlink(missing_ok=True)
    index = load_dataset_index(args.root)  # lists, then writes the cache
    assert (len(index.train), len(index.val)) == tuple(SPLITS.values())
    cache = cache_path(args.root)
    assert cache.exists(), "the cache was not written"
    listing, listing_runs = timed(lambda: find_dataset(args.root), args.repeats)
    cached, cached_runs = timed(lambda: load_dataset_index(args.root), args.repeats)
    load = os.getloadavg()
    print(f"{len(index.train):,} train + {len(index.val):,} val files; cache {cache} "
          f"({cache.stat().st_size / 1e6:.0f} MB); load average {load[0]:.2f}")
    print(f"find_dataset (listing):   {listing:6.2f} s  runs {[round(r, 2) for r in listing_runs]}")
    print(f"load_dataset_index cache: {cached:6.2f} s  runs {[round(r, 2) for r in cached_runs]}")


if __name__ == "__main__":
    main()
