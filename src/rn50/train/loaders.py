"""The dataset index and this rank's training and validation loaders."""

from rn50 import distributed as dist
from rn50.config import DataConfig, check_data_dir
from rn50.data.index_cache import load_dataset_index
from rn50.data.layout import DatasetIndex, classes_without_val, index_warnings
from rn50.data.pipeline import make_loader
from rn50.data.schedule import eval_resolution
from rn50.data.skiplist import apply_skip_list, read_skip_list
from rn50.errors import ConfigError, DataError
from rn50.train.runtime import Runtime


def load_index(cfg: DataConfig, num_classes: int | None) -> DatasetIndex:
    """Find the dataset (data.data_dir, minus data.skip_list) and check it against
    model.num_classes (None: the caller compares classes itself).

    Raises ConfigError (missing folder, another class count) or DataError (no dataset there).
    """
    index = load_dataset_index(check_data_dir(cfg), cache=cfg.index_cache)
    if cfg.skip_list:
        index = apply_skip_list(index, read_skip_list(cfg.skip_list))
    if num_classes is not None:
        check_class_count(index, num_classes)
    return index


def check_class_count(index: DatasetIndex, num_classes: int) -> None:
    """The dataset must have model.num_classes classes; raises ConfigError with one line
    saying which count to set."""
    if len(index.classes) != num_classes:
        raise ConfigError(
            f"model.num_classes is {num_classes} but {index.root} has {len(index.classes)} "
            f"classes; set model.num_classes={len(index.classes)}"
        )


def warn_about_index(index: DatasetIndex, warn, val: bool = True) -> None:
    """Name, through `warn`, what indexing set aside or had to guess (index_warnings) and,
    with `val`, the classes with no val image (their accuracy cannot be measured)."""
    for line in index_warnings(index):
        warn(line)
    missing = classes_without_val(index) if val else []
    if missing:
        shown = ", ".join(f"'{c}'" for c in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        warn(
            f"{len(missing)} class(es) have no val images ({shown}{more}): their val accuracy "
            f"cannot be measured; add val/<class>/ images (rn50 data check lists them)"
        )


def eval_loader(cfg: DataConfig, index: DatasetIndex, rt: Runtime):
    """This rank's share of the validation set at data.eval_resolution: batches of
    (images N x 3 x R x R, targets N, unreadable paths). Raises DataError without val images."""
    if not index.val:
        raise DataError(f"no validation images in {index.root}; add val/ (see README: Data)")
    return make_loader(
        cfg,
        index.val,
        train=False,
        batch_size=cfg.eval_batch_size or 2 * cfg.batch_size,
        device=rt.device,
        rank=dist.rank(),
        world=dist.world_size(),
        resolution=eval_resolution(cfg),
    )


def train_loader(
    cfg: DataConfig,
    index: DatasetIndex,
    seed: int,
    rt: Runtime,
    accum: int = 1,
    resolution: int | None = None,
):
    """Micro-batches of cfg.batch_size, `accum` per optimizer step, this rank's share, with
    crops of `resolution` px (default cfg.resolution).

    Raises ConfigError when one step needs more images than the training set has.
    """
    world = dist.world_size()
    if len(index.train) < cfg.batch_size * world * accum:
        raise ConfigError(
            f"data.batch_size ({cfg.batch_size}) x {world} process(es) x train.accum_steps "
            f"({accum}) is more than the {len(index.train)} training images; lower "
            f"data.batch_size or train.accum_steps"
        )
    return make_loader(
        cfg,
        index.train,
        train=True,
        batch_size=cfg.batch_size,
        device=rt.device,
        seed=seed,
        rank=dist.rank(),
        world=world,
        accum=accum,
        resolution=resolution,
    )
