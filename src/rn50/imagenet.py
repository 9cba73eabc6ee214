"""ImageNet-1k's class ids, and the check that a dataset labels its images in their order.

Weights trained elsewhere (torchvision's IMAGENET1K_V1, timm's, FFCV's) number their 1000
outputs by the sorted WordNet ids of ImageNet-1k: line i of the Kaggle
LOC_synset_mapping.txt is output i (0 is n01440764, tench; 999 is n15075141, toilet tissue),
which is also torchvision's category order. imagenet_wnids.txt holds those 1000 ids, one a line.
"""

import functools
from collections.abc import Sequence
from pathlib import Path

from rn50.errors import DataError

WNIDS_FILE = Path(__file__).with_name("imagenet_wnids.txt")
NUM_CLASSES = 1000


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in label order (sorted)."""
    return tuple(WNIDS_FILE.read_text(encoding="ascii").split())


def check_imagenet_classes(classes: Sequence[str], root: str | Path) -> None:
    """`classes` (a dataset's class ids, position = label) must be ImageNet-1k's 1000 wnids in
    their order, else DataError with one line: how many there are, or the first id (and its
    label) that differs."""
    wnids = imagenet_wnids()
    where = f"the val set in {str(root)[:240]}"
    if len(classes) != len(wnids):
        raise DataError(
            f"{where} has {len(classes)} classes, but ImageNet-1k weights need ImageNet's "
            f"{len(wnids)} (the wnids of LOC_synset_mapping.txt)"
        )
    for label, (have, want) in enumerate(zip(classes, wnids, strict=True)):
        if have != want:
            what = "is not an ImageNet-1k wnid" if have not in wnids else "is out of order"
            raise DataError(
                f"{where} is not labelled in ImageNet-1k's class order: class {label} is "
                f"'{str(have)[:60]}' where the weights expect '{want}' ('{str(have)[:60]}' "
                f"{what}); the weights' outputs would not mean the dataset's labels"
            )
