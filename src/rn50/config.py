"""Typed run configuration: defaults, YAML files, `--set` overrides, validation.

A YAML file holds only what differs from the defaults below, grouped in sections:

    data:  {data_dir: /data/imagenet, batch_size: 256}
    optim: {max_lr: 0.675}

Each field's comment is its documentation (`rn50 config` prints them all). The resolved
config is written to every run dir and stored in every checkpoint.
"""

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rn50.errors import ConfigError, UserError, excerpt
from rn50.paths import link_loop, read_text_file


@dataclass
class DataConfig:
    """Where the images are and how they are read and augmented."""

    data_dir: str = "data/imagenet"
    """dataset root: an ImageFolder (train/, val/) or the Kaggle ILSVRC layout."""
    batch_size: int = 256
    """images per forward/backward pass on each device; the global batch of one optimizer
    step is batch_size x devices (torchrun processes) x train.accum_steps."""
    eval_batch_size: int = 0
    """images per validation batch; 0 means 2 x batch_size."""
    workers: int | str = "auto"
    """data-loading processes per device; 0 decodes in the training process; auto: this
    process's share of the CPUs it may use (its affinity mask, divided among torchrun's local
    processes), less one kept for the training loop (rn50.data.auto)."""
    resolution: int = 224
    """side of the square training and validation crop, in pixels."""
    eval_resolution: int = 0
    """validation crop side; 0: the training resolution. A little above it (e.g. 256 after
    training at 224) often scores better: random crops make objects look larger in training."""
    min_resolution: int = 0
    """progressive resizing: first training resolution (e.g. 160); 0: off."""
    ramp_start_epoch: int = 0
    """progressive resizing: where the linear ramp from min_resolution starts (epochs counted
    from 1); epochs up to it train at min_resolution. Between the two ramp epochs the side is
    interpolated and rounded to a multiple of 32, so the last epoch at min_resolution and the
    first at full resolution can lie inside the ramp (rn50.data.schedule.resolution_at gives
    each epoch's): with 160 -> 192, start 12 and end 14, epoch 13's 176 rounds (half to even,
    like FFCV's numpy) up to 192, so epochs 1-12 train at 160 and 13-16 at 192."""
    ramp_end_epoch: int = 0
    """progressive resizing: where the ramp ends (epochs counted from 1); from this epoch on
    every epoch trains at data.resolution, and earlier ones may already (see ramp_start_epoch)."""
    crop_ratio: float = 0.875
    """validation resizes the short side to resolution / crop_ratio, then center-crops."""
    min_scale: float = 0.08
    """smallest area fraction RandomResizedCrop may take (torchvision's default)."""
    hflip: bool = True
    """random horizontal flip during training."""
    max_bad_fraction: float = 0.001
    """undecodable images are skipped and counted; more than this fraction of an epoch (and
    more than 10 files) stops the run: a silently corrupted dataset is an error, not noise."""
    skip_list: str = ""
    """file listing images to leave out (written by rn50 data check --skip-list); empty: none."""
    decode: str = "auto"
    """where images are decoded: auto (below), cpu (workers decode JPEGs with libjpeg-turbo,
    DCT-scaled to the crop, and crop/resize/flip in uint8), gpu (workers only read the files;
    the training device decodes the batch, with nvJPEG on CUDA, and crops/resizes/flips it),
    or pil (PIL and torchvision's transforms: the plain reference path). All three give the
    same crops. auto: cpu without CUDA; on a GPU, gpu where the workers decode fewer images/s
    than the GPU's model step and the GPU decoder more, else cpu (the measured rates it
    compares: rn50.data.auto)."""
    decode_ahead: int = 2
    """decode gpu: batches decoded ahead in a background thread, so the device decodes the next
    batch while the model trains on this one; 0: decode between steps."""
    gpu_decoder: str = "torchvision"
    """decode gpu: the device's JPEG decoder. torchvision (decode_jpeg: nvJPEG's CUDA decoder)
    or nvimgcodec (NVIDIA's nvImageCodec, pip install nvidia-nvimgcodec-cu12 or -cu13: the
    GPU's hardware JPEG engines where it has them, for baseline JPEGs, and nvJPEG's CUDA
    decoder for the rest). Both give the same crops, labels and resume
    (rn50.data.device_decoders)."""
    index_cache: bool = True
    """reuse the file list of the last start when no dataset folder changed, instead of listing
    every file again (1.28M for ImageNet); false: list them at every start."""
    auto_augment: str = "none"
    """automatic augmentation of each training image after its crop and flip, on uint8 pixels
    (torchvision.transforms.v2, bilinear, as torchvision's classification references): none,
    ta_wide (TrivialAugmentWide), randaugment (RandAugment, 2 ops at magnitude 9) or
    autoaugment (AutoAugment's ImageNet policy)."""
    random_erasing: float = 0.0
    """probability that a training image has a random rectangle erased (torchvision's
    RandomErasing, on the normalized image: the rectangle becomes 0, the mean colour); 0: off."""
    mixup_alpha: float = 0.0
    """MixUp (torchvision.transforms.v2.MixUp): each training batch is blended with itself
    rolled by one, weight ~ Beta(alpha, alpha), and so are its one-hot labels; 0: off. With
    cutmix_alpha too, each batch gets one of the two, at random."""
    cutmix_alpha: float = 0.0
    """CutMix (torchvision.transforms.v2.CutMix): a box of each training image is replaced by
    the next image's, the labels mixed by area; area ~ Beta(alpha, alpha); 0: off."""
    ra_reps: int = 1
    """repeated augmentation (torchvision's RASampler, --ra-reps): each image of an epoch is
    seen this many times, with different crops, in the same optimizer step and on different
    devices where there are several; the epoch keeps the training set's length, so it holds
    1/ra_reps of the images. 1: off."""


@dataclass
class ModelConfig:
    """Which network is built."""

    arch: str = "resnet50"
    """a torchvision ResNet: resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
    resnext101_32x8d, resnext101_64x4d, wide_resnet50_2 or wide_resnet101_2."""
    num_classes: int = 1000
    """size of the output layer; must equal the number of classes in the dataset."""
    channels_last: bool = True
    """NHWC memory layout: faster convolutions with tensor cores and on CPU."""
    zero_init_residual: bool = True
    """start the last BatchNorm of each residual block at zero, so every block begins as the
    identity: faster, steadier early training (Goyal et al. 2017)."""
    blurpool: bool = False
    """FFCV's BlurPool: a fixed 3x3 binomial blur ([1,2,1] x [1,2,1] / 16, depthwise, stride 1,
    zero padding 1) before every convolution with stride > 1 and at least 16 input channels
    (6 in ResNet-50 and ResNet-18), against aliasing when it downsamples. Its filters are
    buffers in the state_dict (keys ...conv2.conv.weight and ...conv2.blur_filter, as FFCV's)."""
    sync_bn: bool = False
    """under torchrun, BatchNorm statistics over the whole global batch (SyncBatchNorm, CUDA
    only) instead of each device's own batch: worth its communication when the per-device
    batch is small (under ~32). No effect in a single process."""


@dataclass
class OptimConfig:
    """SGD and the LR schedule (one-cycle, or cosine with warm-up), stepped every batch."""

    optimizer: str = "sgd"
    """the optimizer; only sgd (with momentum) for now."""
    momentum: float = 0.9
    """SGD momentum, used as-is when cycle_momentum is false."""
    nesterov: bool = False
    """Nesterov momentum."""
    weight_decay: float = 1e-4
    """L2 penalty applied by SGD (to every parameter unless no_bn_weight_decay)."""
    no_bn_weight_decay: bool = True
    """no weight decay on BatchNorm weights and biases (which parameters: no_decay_rule)."""
    no_decay_rule: str = "1d"
    """which parameters no_bn_weight_decay exempts from weight decay: 1d (every 1-D parameter:
    all BatchNorm weights and biases and the fc bias), bn_name (FFCV's rule: parameters whose
    name contains 'bn', so the downsample BatchNorms and the fc bias are decayed) or norm
    (torchvision's --norm-weight-decay 0: every parameter of a normalization layer; the fc
    bias is decayed)."""
    fused: bool = True
    """fused SGD update (one kernel for all parameters) where this torch and device have it;
    not with fp16, whose loss scaler skips steps in a way fused SGD does not honour."""
    schedule: str = "onecycle"
    """the LR schedule, stepped every optimizer step: onecycle (torch OneCycleLR, the keys
    below) or cosine (torch LinearLR from warmup_decay x max_lr up to max_lr over
    warmup_epochs, then CosineAnnealingLR down to 0, chained by SequentialLR: torchvision's
    recipe, there stepped per epoch). cosine keeps momentum fixed at optim.momentum and ignores
    pct_start, div_factor, final_div_factor, anneal_strategy, three_phase and cycle_momentum."""
    warmup_epochs: int = 5
    """schedule cosine: epochs of linear warm-up (0: none); must be fewer than train.epochs."""
    warmup_decay: float = 0.01
    """schedule cosine: the warm-up's first LR as a fraction of max_lr (torchvision's
    --lr-warmup-decay; LinearLR's start_factor)."""
    max_lr: float | str = 0.675
    """peak learning rate of the cycle (the reference run's), or auto: run the LR range test
    (see lr_finder) before training and use its suggestion."""
    scale_lr: bool = False
    """linear scaling rule (Goyal et al. 2017): read max_lr as the peak LR for a global batch
    of 256 and multiply it by global batch / 256 (global batch = data.batch_size x devices x
    train.accum_steps); false uses max_lr as it is. Not with max_lr: auto."""
    pct_start: float = 0.3
    """fraction of all steps spent warming up from max_lr/div_factor to max_lr."""
    div_factor: float = 25.0
    """initial LR = max_lr / div_factor."""
    final_div_factor: float = 1e4
    """final LR = initial LR / final_div_factor."""
    anneal_strategy: str = "cos"
    """shape of each phase of the cycle: cos (cosine, the reference run's) or linear (a
    straight ramp up and down: the triangle of FFCV's ResNet-50 recipes)."""
    three_phase: bool = True
    """warm up, anneal back to the initial LR symmetrically, then decay to the final LR."""
    cycle_momentum: bool = True
    """move momentum opposite to the LR between max_momentum and base_momentum."""
    base_momentum: float = 0.85
    """momentum at the LR peak."""
    max_momentum: float = 0.95
    """momentum at the start and end of the cycle."""


@dataclass
class LRFinderConfig:
    """The LR range test (rn50 lr-find, or optim.max_lr: auto): an exponential LR sweep over
    real training steps, stopped when the loss diverges."""

    start_lr: float = 1e-7
    """LR of the first sweep step."""
    end_lr: float = 10.0
    """LR of the last sweep step."""
    num_iter: int = 100
    """sweep steps (one batch each); the LR grows by (end_lr/start_lr)^(1/(num_iter-1))."""
    smooth_beta: float = 0.98
    """weight of the past in the exponential moving average of the loss."""
    diverge_factor: float = 4.0
    """stop when the smoothed loss exceeds this multiple of its best value."""
    rule: str = "divergence"
    """how max_lr is suggested (README compares the rules on real runs): divergence (the LR
    where the sweep diverged / divergence_divisor), edge (the last LR before the loss rises
    edge_rise above its lowest value so far), steepest (steepest descent of the smoothed loss
    before its minimum) or minimum (the LR of the lowest smoothed loss / min_divisor)."""
    min_divisor: float = 10.0
    """divisor of the minimum rule."""
    edge_rise: float = 0.1
    """relative rise of the loss that marks the edge (0.1 = 10%)."""
    divergence_divisor: float = 3.0
    """divisor of the divergence rule."""


@dataclass
class TrainConfig:
    """How long, where, on what and with which precision the run trains."""

    epochs: int = 14
    """passes over the training set."""
    precision: str = "auto"
    """fp16 (with GradScaler), bf16, fp32, or auto: bf16 where supported, else fp16 on CUDA."""
    device: str = "auto"
    """cuda, cpu, cuda:N, or auto: cuda when available, else cpu. Under torchrun each process
    uses GPU LOCAL_RANK of its machine."""
    accum_steps: int = 1
    """gradient accumulation: micro-batches of data.batch_size per optimizer step on each
    device (gradients are all-reduced across devices on the last one only). Keeps the global
    batch when there are fewer devices or less memory."""
    compile: bool = False
    """torch.compile the model before DDP wraps it, for static shapes: one graph per training
    resolution and one for evaluation, each compiled (and logged with its time) at its first
    step; faster steps after a slow first one (minutes for ResNet-50 on a CPU); checkpoints
    hold the plain weights either way."""
    seed: int = 0
    """seeds the initial weights, the data order and the augmentations."""
    label_smoothing: float = 0.0
    """cross-entropy label smoothing."""
    ema: bool = False
    """keep an exponential moving average of the weights (and BatchNorm statistics) and make
    it the run's model: validation, model_best.pth, eval, predict and export use the averaged
    weights; the raw weights' validation is logged beside it (raw_val_*)."""
    ema_decay: float = 0.9998
    """EMA weight of the past per optimizer step; it averages over about 1/(1-decay) steps
    (0.9998: 5,000 steps, under one ImageNet epoch at a global batch of 256)."""
    ema_bn_batches: int = 100
    """before each evaluation, recompute the EMA model's BatchNorm statistics from this many
    training batches (forward passes only). 0: average them with the weights instead, which
    only describes the averaged network when the weights move slowly (long runs)."""
    checkpoint_dir: str = "runs/imagenet"
    """the run directory: config, logs, metrics.jsonl and checkpoints go here."""
    resume: bool = True
    """continue from the newest checkpoint in checkpoint_dir when there is one; false starts
    from scratch, and is refused where checkpoint_dir already holds a run."""
    initial_model_path: str = ""
    """initial weights: saved here on the first start and loaded on every later one, so each
    run of a config starts from the same init; empty means <checkpoint_dir>/initial_model.pth."""
    log_every: int = 50
    """plain progress line (and TensorBoard step point) every this many training steps; 0:
    none by steps. The terminal shows a live bar instead (see progress)."""
    log_every_seconds: float = 60.0
    """also a plain progress line when this many seconds passed since the last one, so a slow
    run shows life in a log file; 0: never by time."""
    progress: str = "auto"
    """auto (a bar when stderr is a terminal, else plain lines on stdout), bar, lines, or off
    (no step lines; epoch summaries still print). Always rank 0 only."""
    tensorboard: bool = False
    """write TensorBoard scalars (per step and per epoch) to checkpoint_dir; view them with
    tensorboard --logdir runs/ (needs the tensorboard package)."""
    price_per_gpu_hour: float = 0.0
    """what one device costs per hour (any currency); summary.json then gives the run's cost
    (hours x price x devices). 0: unknown, no cost."""
    save_every_minutes: float = 10.0
    """write the rolling last.pth (exact mid-epoch resume) this often; 0: never by time."""
    save_every_steps: int = 0
    """also write last.pth every this many steps; 0: never by steps."""
    max_bad_steps: int = 20
    """stop when the loss is NaN/inf for this many steps in a row (each such step is skipped)."""
    sync_check: str = "step"
    """how a step refuses a NaN/inf loss: step (read on the host every step, which waits for
    the GPU once a step) or deferred (decided on the device: the step's changes to weights,
    momentum and BatchNorm statistics are put back there; the flags are read every log_every
    steps (50 when 0), before a checkpoint and at the epoch's end, where skipped steps are
    named and max_bad_steps counted)."""


@dataclass
class EvalConfig:
    """How validation (during training and in rn50 eval), predict and the exports score an
    image."""

    flip: bool = False
    """flip test-time augmentation: the logits of each image are the mean of the network's
    logits for the image and for its horizontal mirror (FFCV's lr_tta, which sums them: the
    same ranking). Costs a second forward pass; a checkpoint keeps it, so eval, predict, the
    app and the exports apply it too."""


@dataclass
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lr_finder: LRFinderConfig = field(default_factory=LRFinderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (safe to store in a checkpoint and load with weights_only)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The whole config as YAML (what the run dir's config.yaml holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {f.name: f.type for f in fields(Config)}
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DECODE_MODES = ("cpu", "gpu", "pil")  # rn50.data.pipeline implements them
AUTO_AUGMENT = ("none", "ta_wide", "randaugment", "autoaugment")  # rn50.data.augment
ANNEAL = ("cos", "linear")  # torch OneCycleLR's anneal_strategy
# torchvision's ResNet family: what rn50's recipes, BlurPool and its tests are built for.
ARCHS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
SCHEDULES = ("onecycle", "cosine")  # rn50.optim.build_scheduler
NO_DECAY_RULES = ("1d", "bn_name", "norm")  # rn50.optim.param_groups
RULES = ("steepest", "minimum", "edge", "divergence")
PROGRESS = ("auto", "bar", "lines", "off")
SYNC_CHECKS = ("step", "deferred")
GPU_DECODERS = ("torchvision", "nvimgcodec")  # rn50.data.device_decoders


@functools.cache  # parsing the module's source takes ~15 ms a section, at every start
def field_docs(section_cls: type) -> dict[str, str]:
    """The docstring under each field of a section (used by `--help` and `rn50 config`)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(section_cls)))
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe() -> str:
    """Every key with its default and meaning, as YAML comments."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"{name}:  # {cls.__doc__}")
        docs = field_docs(cls)
        for f in fields(cls):
            default = yaml.safe_dump(getattr(cls(), f.name), default_flow_style=True).strip()
            default = default.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"  {f.name}: {default}  # {docs.get(f.name, '')}")
    return "\n".join(lines)


def _type_name(tp: Any) -> str:
    if isinstance(tp, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _matches(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


TRUE_WORDS = ("true", "yes", "on")  # YAML 1.1's booleans, any case
FALSE_WORDS = ("false", "no", "off")


def _from_word(word: str, tp: Any) -> Any:
    """A scalar the config loader kept as written, read as type `tp`; ValueError if it is not
    one. The field's type decides, not YAML 1.1's guess: `progress: off` is the word off, and
    `hflip: off` is false."""
    text = word.strip()
    if tp is bool:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise ValueError(word)
    if tp is int:
        if len(text) > 40:  # no key's range needs more digits; int() of 5,000 digits raises
            raise ValueError(word)
        return int(text)
    if tp is float:
        return float(text)  # 1e-4 without a dot too (YAML 1.1 reads it as a string)
    return word


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check one value against its field type; ints are accepted where floats are expected.

    A union such as `float | str` takes the first member type the value fits. Words (every
    plain scalar of a config file or --set) are read as the type (see _from_word).
    """
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    for option in options:
        candidate = value
        if isinstance(value, str):
            try:
                candidate = _from_word(value, option)
            except ValueError:
                continue
        if _matches(candidate, option):
            return float(candidate) if option is float else candidate
    raise ConfigError(
        f"{key} must be {_type_name(tp)}, got {excerpt(value)}; fix it in the YAML file or with "
        f"--set {key}=VALUE"
    )


def _unknown(key: str, choices: typing.Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key[:100], list(choices), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(choices)}"
    return ConfigError(f"unknown config key {excerpt(key)}{hint}")


def merge(cfg: Config, tree: Any, source: str = "config") -> Config:
    """Apply a nested dict {section: {key: value}} onto cfg, checking every key and type."""
    if tree is None:
        return cfg
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{source} must be a mapping of sections (data:, model:, ...), got "
            f"{excerpt(tree)}; write the file as 'data:' / '  batch_size: 64' lines"
        )
    for section, values in tree.items():
        if section not in SECTIONS:
            raise _unknown(section if isinstance(section, str) else excerpt(section), SECTIONS)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"'{section}' must be a mapping of keys, got {excerpt(values)}")
        part = getattr(cfg, section)
        types_ = {f.name: f.type for f in fields(part)}
        for key, value in values.items():
            dotted = f"{section}.{key}" if isinstance(key, str) else f"{section}.{excerpt(key)}"
            if key not in types_:
                raise _unknown(dotted, [f"{section}.{k}" for k in types_])
            setattr(part, key, _coerce(dotted, value, types_[key]))
    return cfg


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader for config text, with two changes.

    Plain scalars stay the words they are written as (only null is resolved): the field's
    type reads them (_from_word), so YAML 1.1 cannot turn `progress: off` into false or a
    folder named 2024 into a number. Aliases (*name) are refused: a few lines of them expand
    to billions of items (an "alias bomb"), and a config needs none.
    """

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"uses the YAML alias *{event.anchor[:40]}; aliases are not "
                "allowed in a config: write the value out", event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 (PyYAML's signature)
        # A key written twice: YAML keeps the last silently, and the user meant one of them.
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"sets '{str(key)[:40]}' twice; keep one of them",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

MAX_CONFIG_BYTES = 1 << 20  # a config holds a few dozen keys: a megabyte is another file


def parse_yaml(text: str, source: str) -> Any:
    """Config text -> nested dicts of words (see _ConfigLoader); ConfigError naming `source`
    and the line when it is not valid YAML or uses an alias."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", "") or ""
        if "alias" in problem or "twice" in problem:
            raise ConfigError(f"{source}{where} {problem}") from None
        raise ConfigError(f"{source} is not valid YAML{where}; fix the syntax") from None
    except ValueError:  # an explicit !!int of thousands of digits, !!timestamp out of range
        raise ConfigError(f"{source} holds a value YAML cannot read; fix it") from None


def parse_override(item: str) -> dict[str, dict[str, Any]]:
    """'optim.max_lr=0.5' -> {'optim': {'max_lr': '0.5'}}; the value is read as config YAML
    (a word; merge reads it as the key's type)."""
    key, sep, raw = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(
            f"--set expects SECTION.KEY=VALUE (e.g. optim.max_lr=0.5), got {excerpt(item)}"
        )
    try:
        value = parse_yaml(raw, "--set") if raw.strip() else ""
    except ConfigError as e:
        if "alias" in str(e):
            raise
        value = raw
    return {section: {name: value}}


def load_config(
    path: str | os.PathLike | None = None,
    overrides: typing.Sequence[str] = (),
    base: Config | None = None,
) -> Config:
    """Defaults (or `base`), then the YAML file, then each `--set` override, then validation.

    The file must be a non-empty UTF-8 text file of at most MAX_CONFIG_BYTES; every problem is
    a ConfigError of one line.
    """
    cfg = base or Config()
    if path is not None:
        hint = "pass an existing YAML file to --config"
        try:
            text = read_text_file(path, "config file", hint, MAX_CONFIG_BYTES)
        except UserError as e:  # rn50.paths says what is wrong with the file
            raise ConfigError(str(e)) from None
        shown = excerpt(str(path), 240)
        merge(cfg, parse_yaml(text, shown), source=f"--config {shown}")
    for item in overrides:
        merge(cfg, parse_override(item), source="--set")
    validate(cfg)
    return cfg


def from_dict(tree: dict) -> Config:
    """Rebuild a Config stored in a checkpoint (keys no longer known are ignored)."""
    cfg = Config()
    for section, values in (tree or {}).items():
        if section in SECTIONS and isinstance(values, dict):
            part = getattr(cfg, section)
            known = {f.name for f in fields(part)}
            for k, v in values.items():
                if k in known:
                    setattr(part, k, v)
    return cfg


def _check(cond: bool, key: str, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{key} {rule}; fix it in the YAML file or with --set {key}=VALUE")


@dataclass(frozen=True)
class Bound:
    """The values a number key may take: lo..hi, each end open or closed.

    Every int and float key has one (a test checks it): finite, never negative where that
    means nothing, and no larger than any run could use, so 1e308 or 10**30 is refused
    before a run dir is touched. `zero` says what 0 means where it is special; `why` is
    added to the message of a value below a closed lo other than 0.
    """

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    zero: str = ""
    why: str = ""

    def rule(self, value: float) -> str | None:
        """None when `value` is inside, else the rule it breaks, e.g. "must be at least 1"."""
        if not math.isfinite(value):
            return "must be a finite number"
        low = value <= self.lo if self.lo_open else value < self.lo
        high = value >= self.hi if self.hi_open else value > self.hi
        if not (low or high):
            return None
        if 0 <= self.lo and self.hi <= 1:  # a fraction: say the interval
            return (
                f"must be in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}"
                f"{')' if self.hi_open else ']'}"
            )
        if high:
            return f"must be {'below' if self.hi_open else 'at most'} {_num(self.hi)}"
        if self.lo_open:
            return "must be positive" if self.lo == 0 else f"must be above {_num(self.lo)}"
        if self.lo == 0:
            return f"must be 0{f' ({self.zero})' if self.zero else ''} or more"
        return f"must be at least {_num(self.lo)}{self.why}"


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


FRACTION = Bound(0, 1)
BOUNDS: dict[str, Bound] = {
    "data.batch_size": Bound(1, 65536),
    "data.eval_batch_size": Bound(0, 65536, zero="auto"),
    "data.workers": Bound(0, 1_000_000),  # the machine's share is applied at run time
    "data.resolution": Bound(16, 8192),
    "data.eval_resolution": Bound(0, 8192),
    "data.min_resolution": Bound(0, 8192),
    "data.ramp_start_epoch": Bound(0, 100_000),
    "data.ramp_end_epoch": Bound(0, 100_000),
    "data.crop_ratio": Bound(0, 1, lo_open=True),
    "data.min_scale": Bound(0, 1, lo_open=True),
    "data.max_bad_fraction": FRACTION,
    "data.decode_ahead": Bound(0, 64),
    "data.random_erasing": FRACTION,
    "data.mixup_alpha": Bound(0, 1000, zero="off"),
    "data.cutmix_alpha": Bound(0, 1000, zero="off"),
    "data.ra_reps": Bound(1, 1000, why=" (1: off)"),
    "model.num_classes": Bound(2, 1_000_000),
    "optim.momentum": Bound(0, 1, hi_open=True),
    "optim.weight_decay": Bound(0, 1),
    "optim.max_lr": Bound(0, 10_000, lo_open=True),
    "optim.pct_start": Bound(0, 1, lo_open=True, hi_open=True),
    "optim.div_factor": Bound(0, 1e6, lo_open=True),
    "optim.final_div_factor": Bound(
        1, 1e12, why=" (final LR = initial LR / final_div_factor, so below 1 the cycle would "
        "end above where it started)",
    ),
    "optim.base_momentum": Bound(0, 1, hi_open=True),
    "optim.max_momentum": Bound(0, 1, hi_open=True),
    "optim.warmup_epochs": Bound(0, 100_000),
    "optim.warmup_decay": Bound(0, 1, lo_open=True),
    "lr_finder.start_lr": Bound(0, 1000, lo_open=True),
    "lr_finder.end_lr": Bound(0, 1000, lo_open=True),
    "lr_finder.num_iter": Bound(10, 1_000_000),
    "lr_finder.smooth_beta": Bound(0, 1, hi_open=True),
    "lr_finder.diverge_factor": Bound(1, 1e12, lo_open=True),  # 1e9: never stop early
    "lr_finder.min_divisor": Bound(1, 1e6),
    "lr_finder.edge_rise": Bound(0, 1000, lo_open=True),
    "lr_finder.divergence_divisor": Bound(1, 1e6),
    "train.epochs": Bound(1, 100_000),
    "train.accum_steps": Bound(1, 65536),
    "train.seed": Bound(0, 2**32 - 1),  # numpy's seeds are 32-bit
    "train.label_smoothing": Bound(0, 1, hi_open=True),
    "train.ema_decay": Bound(0, 1, lo_open=True, hi_open=True),
    "train.ema_bn_batches": Bound(0, 1_000_000),
    "train.log_every": Bound(0, 10**9),
    "train.log_every_seconds": Bound(0, 1e9),
    "train.price_per_gpu_hour": Bound(0, 1e6, zero="unknown"),
    "train.save_every_minutes": Bound(0, 1e7),
    "train.save_every_steps": Bound(0, 10**9),
    "train.max_bad_steps": Bound(1, 10**9),
}
MAX_TEXT = 4096  # PATH_MAX on Linux: no path or word of a config is longer


def _check_fields(cfg: Config) -> None:
    """Every number within its Bound, every string a short line of text."""
    for section in fields(cfg):
        part = getattr(cfg, section.name)
        for f in fields(part):
            key, value = f"{section.name}.{f.name}", getattr(part, f.name)
            if isinstance(value, str):
                _check(len(value) <= MAX_TEXT, key,
                       f"must be at most {MAX_TEXT:,} characters, got {len(value):,}")
                _check(value.isprintable(), key,
                       f"must be one line of printable text, got {excerpt(value)}")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                rule = BOUNDS[key].rule(value)
                _check(rule is None, key, f"{rule}, got {excerpt(value)}")


def _one_of(value: str, key: str, choices: typing.Sequence[str]) -> None:
    _check(value in choices, key, f"must be one of {', '.join(choices)}, got {excerpt(value)}")


def validate(cfg: Config) -> None:
    """Reject values no run could use, naming the key and the rule.

    Single numbers are checked against BOUNDS, then the rules between keys and the words."""
    _check_fields(cfg)
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    _check(
        d.eval_resolution == 0 or d.eval_resolution >= 16,
        "data.eval_resolution",
        "must be 0 (same as resolution) or at least 16",
    )
    if d.min_resolution:
        _check(
            16 <= d.min_resolution <= d.resolution,
            "data.min_resolution",
            f"must be between 16 and data.resolution ({d.resolution}), or 0 for off",
        )
        _check(
            0 <= d.ramp_start_epoch < d.ramp_end_epoch,
            "data.ramp_end_epoch",
            "must be larger than data.ramp_start_epoch when min_resolution is set",
        )
    if m.arch not in ARCHS:
        raise ConfigError(
            f"model.arch {excerpt(m.arch)} is not a torchvision ResNet rn50 trains; use one of "
            f"{', '.join(ARCHS[:5])}, ... (see rn50 config)"
        )
    _check(o.optimizer == "sgd", "optim.optimizer", f"must be sgd, got {excerpt(o.optimizer)}")
    if isinstance(o.max_lr, str):
        _check(o.max_lr == "auto", "optim.max_lr",
               f"must be a number or auto, got {excerpt(o.max_lr)}")
    if o.three_phase:
        _check(o.pct_start < 0.5, "optim.pct_start", "must be below 0.5 when three_phase is true")
    _one_of(o.anneal_strategy, "optim.anneal_strategy", ANNEAL)
    _one_of(o.schedule, "optim.schedule", SCHEDULES)
    _one_of(o.no_decay_rule, "optim.no_decay_rule", NO_DECAY_RULES)
    if o.schedule == "cosine":
        _check(o.warmup_epochs < t.epochs, "optim.warmup_epochs",
               f"must be 0 or more and fewer than train.epochs ({t.epochs}), "
               f"got {o.warmup_epochs}")
    _check(
        o.base_momentum <= o.max_momentum,
        "optim.base_momentum",
        f"must not exceed optim.max_momentum ({o.max_momentum})",
    )
    f = cfg.lr_finder
    _check(f.end_lr > f.start_lr, "lr_finder.end_lr", "must be larger than lr_finder.start_lr")
    _one_of(f.rule, "lr_finder.rule", RULES)
    _one_of(t.precision, "train.precision", PRECISIONS)
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        "train.device",
        f"must be auto, cpu or cuda[:N], got {excerpt(t.device)}",
    )
    _check(bool(t.checkpoint_dir), "train.checkpoint_dir", "must name a directory")
    _one_of(t.progress, "train.progress", PROGRESS)
    _one_of(t.sync_check, "train.sync_check", SYNC_CHECKS)
    _check(
        not (o.scale_lr and o.max_lr == "auto"),
        "optim.scale_lr",
        "must be false with optim.max_lr: auto (the range test already measures the LR for "
        "this batch)",
    )
    _one_of(d.decode, "data.decode", ("auto", *DECODE_MODES))
    if isinstance(d.workers, str):
        _check(d.workers == "auto", "data.workers",
               f"must be auto or a whole number of 0 or more, got {excerpt(d.workers)}")
    _one_of(d.auto_augment, "data.auto_augment", AUTO_AUGMENT)
    _one_of(d.gpu_decoder, "data.gpu_decoder", GPU_DECODERS)


def check_data_dir(cfg: DataConfig, key: str = "data.data_dir") -> Path:
    """The data directory as a Path, or a one-line error (naming it `key`, the setting or
    flag the user gave it with) saying how to get one."""
    p = Path(cfg.data_dir).expanduser()
    try:
        found = p.is_dir()
    except OSError:  # a name longer than the filesystem allows
        found = False
    loop = None if found else link_loop(p, key)
    if loop:
        raise ConfigError(loop)
    if not found:
        shown = excerpt(str(p), 240)
        demo = str(p) if len(shown) == len(str(p)) + 2 else "DIR"  # a path cut short: DIR
        raise ConfigError(
            f"{key}: no such directory {shown}; set {key} to your ImageNet folder "
            f"(or run 'rn50 data demo {demo}' for the small demo dataset)"
        )
    return p
