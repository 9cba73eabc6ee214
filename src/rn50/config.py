"""Typed run configuration: defaults, YAML files, `--set` overrides, validation.

A YAML file holds only what differs from the defaults below, grouped in sections:

    data:  {data_dir: /data/imagenet, batch_size: 256}
    optim: {max_lr: 0.675}

Each field's comment is its documentation (`rn50 config` prints them all). The resolved
config is written to every run dir and stored in every checkpoint.
"""

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rn50.errors import ConfigError


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
    workers: int = 8
    """data-loading processes per device; 0 decodes in the training process."""
    resolution: int = 224
    """side of the square training and validation crop, in pixels."""
    eval_resolution: int = 0
    """validation crop side; 0: the training resolution. A little above it (e.g. 256 after
    training at 224) often scores better: random crops make objects look larger in training."""
    min_resolution: int = 0
    """progressive resizing: first training resolution (e.g. 160); 0: off."""
    ramp_start_epoch: int = 0
    """progressive resizing: last epoch trained at min_resolution."""
    ramp_end_epoch: int = 0
    """progressive resizing: first epoch trained at the full resolution."""
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
    decode: str = "cpu"
    """where images are decoded: cpu (workers decode JPEGs with libjpeg-turbo, DCT-scaled to the
    crop, and crop/resize/flip in uint8), gpu (workers only read the files; the training device
    decodes the batch, with nvJPEG on CUDA, and crops/resizes/flips it), or pil (PIL and
    torchvision's transforms: the plain reference path). All three give the same crops."""
    decode_ahead: int = 2
    """decode gpu: batches decoded ahead in a background thread, so the device decodes the next
    batch while the model trains on this one; 0: decode between steps."""
    index_cache: bool = True
    """reuse the file list of the last start when no dataset folder changed, instead of listing
    every file again (1.28M for ImageNet); false: list them at every start."""


@dataclass
class ModelConfig:
    """Which network is built."""

    arch: str = "resnet50"
    """a torchvision classification model name (resnet50, resnet18, ...)."""
    num_classes: int = 1000
    """size of the output layer; must equal the number of classes in the dataset."""
    channels_last: bool = True
    """NHWC memory layout: faster convolutions with tensor cores and on CPU."""
    zero_init_residual: bool = True
    """start the last BatchNorm of each residual block at zero, so every block begins as the
    identity: faster, steadier early training (Goyal et al. 2017)."""
    sync_bn: bool = False
    """under torchrun, BatchNorm statistics over the whole global batch (SyncBatchNorm, CUDA
    only) instead of each device's own batch: worth its communication when the per-device
    batch is small (under ~32). No effect in a single process."""


@dataclass
class OptimConfig:
    """SGD and the one-cycle LR schedule (torch OneCycleLR), stepped every batch."""

    optimizer: str = "sgd"
    """the optimizer; only sgd (with momentum) for now."""
    momentum: float = 0.9
    """SGD momentum, used as-is when cycle_momentum is false."""
    nesterov: bool = False
    """Nesterov momentum."""
    weight_decay: float = 1e-4
    """L2 penalty applied by SGD (to every parameter unless no_bn_weight_decay)."""
    no_bn_weight_decay: bool = True
    """no weight decay on BatchNorm weights and biases (the 1-D parameters)."""
    fused: bool = True
    """fused SGD update (one kernel for all parameters) where this torch and device have it;
    not with fp16, whose loss scaler skips steps in a way fused SGD does not honour."""
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
    """continue from the newest checkpoint in checkpoint_dir when there is one."""
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
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lr_finder: LRFinderConfig = field(default_factory=LRFinderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (safe to store in a checkpoint and load with weights_only)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {f.name: f.type for f in fields(Config)}
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DECODE_MODES = ("cpu", "gpu", "pil")  # rn50.data.pipeline implements them
ANNEAL = ("cos", "linear")  # torch OneCycleLR's anneal_strategy
RULES = ("steepest", "minimum", "edge", "divergence")
PROGRESS = ("auto", "bar", "lines", "off")
SYNC_CHECKS = ("step", "deferred")


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


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check one value against its field type; ints are accepted where floats are expected.

    A union such as `float | str` takes the first member type the value fits.
    """
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    for option in options:
        candidate = value
        if option is float and isinstance(value, str):
            # PyYAML reads 1e-4 (no dot) as a string; a user writing it means the number.
            try:
                candidate = float(value)
            except ValueError:
                continue
        if _matches(candidate, option):
            return float(candidate) if option is float else candidate
    raise ConfigError(
        f"{key} must be {_type_name(tp)}, got {value!r}; fix it in the YAML file or with "
        f"--set {key}=VALUE"
    )


def _unknown(key: str, choices: typing.Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(choices), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(choices)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def merge(cfg: Config, tree: Any, source: str = "config") -> Config:
    """Apply a nested dict {section: {key: value}} onto cfg, checking every key and type."""
    if tree is None:
        return cfg
    if not isinstance(tree, dict):
        raise ConfigError(f"{source} must be a mapping of sections (data:, model:, ...)")
    for section, values in tree.items():
        if section not in SECTIONS:
            raise _unknown(str(section), SECTIONS)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"'{section}' must be a mapping of keys, got {values!r}")
        part = getattr(cfg, section)
        types_ = {f.name: f.type for f in fields(part)}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if key not in types_:
                raise _unknown(dotted, [f"{section}.{k}" for k in types_])
            setattr(part, key, _coerce(dotted, value, types_[key]))
    return cfg


def parse_override(item: str) -> dict[str, dict[str, Any]]:
    """'optim.max_lr=0.5' -> {'optim': {'max_lr': 0.5}}; the value is read as YAML."""
    key, sep, raw = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE (e.g. optim.max_lr=0.5), got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return {section: {name: value}}


def load_config(
    path: str | os.PathLike | None = None,
    overrides: typing.Sequence[str] = (),
    base: Config | None = None,
) -> Config:
    """Defaults (or `base`), then the YAML file, then each `--set` override, then validation."""
    cfg = base or Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"config file not found: '{p}'; pass an existing YAML file to --config"
            )
        try:
            tree = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{p} is not valid YAML{where}; fix the syntax") from None
        merge(cfg, tree, source=str(p))
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


def validate(cfg: Config) -> None:
    """Reject values no run could use, naming the key and the rule."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    _check(d.batch_size >= 1, "data.batch_size", f"must be at least 1, got {d.batch_size}")
    _check(d.eval_batch_size >= 0, "data.eval_batch_size", "must be 0 (auto) or more")
    _check(d.workers >= 0, "data.workers", f"must be 0 or more, got {d.workers}")
    _check(d.resolution >= 16, "data.resolution", f"must be at least 16, got {d.resolution}")
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
    _check(0 < d.crop_ratio <= 1, "data.crop_ratio", f"must be in (0, 1], got {d.crop_ratio}")
    _check(0 < d.min_scale <= 1, "data.min_scale", f"must be in (0, 1], got {d.min_scale}")
    _check(m.num_classes >= 2, "model.num_classes", f"must be at least 2, got {m.num_classes}")
    _check(bool(m.arch), "model.arch", "must name a torchvision model")
    _check(o.optimizer == "sgd", "optim.optimizer", f"must be sgd, got '{o.optimizer}'")
    _check(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be 0 or more, got {o.weight_decay}")
    if isinstance(o.max_lr, str):
        _check(o.max_lr == "auto", "optim.max_lr", f"must be a number or auto, got '{o.max_lr}'")
    else:
        _check(o.max_lr > 0, "optim.max_lr", f"must be positive, got {o.max_lr}")
    _check(0 < o.pct_start < 1, "optim.pct_start", f"must be in (0, 1), got {o.pct_start}")
    if o.three_phase:
        _check(o.pct_start < 0.5, "optim.pct_start", "must be below 0.5 when three_phase is true")
    _check(
        o.anneal_strategy in ANNEAL, "optim.anneal_strategy", f"must be one of {', '.join(ANNEAL)}"
    )
    _check(o.div_factor > 0, "optim.div_factor", f"must be positive, got {o.div_factor}")
    _check(
        o.final_div_factor >= 1,
        "optim.final_div_factor",
        f"must be at least 1, got {o.final_div_factor} (final LR = initial LR / final_div_factor, "
        f"so below 1 the cycle would end above where it started)",
    )
    _check(0 <= o.base_momentum < 1, "optim.base_momentum", "must be in [0, 1)")
    _check(0 <= o.max_momentum < 1, "optim.max_momentum", "must be in [0, 1)")
    _check(
        o.base_momentum <= o.max_momentum,
        "optim.base_momentum",
        f"must not exceed optim.max_momentum ({o.max_momentum})",
    )
    f = cfg.lr_finder
    _check(f.start_lr > 0, "lr_finder.start_lr", f"must be positive, got {f.start_lr}")
    _check(f.end_lr > f.start_lr, "lr_finder.end_lr", "must be larger than lr_finder.start_lr")
    _check(f.num_iter >= 10, "lr_finder.num_iter", f"must be at least 10, got {f.num_iter}")
    _check(0 <= f.smooth_beta < 1, "lr_finder.smooth_beta", "must be in [0, 1)")
    _check(f.diverge_factor > 1, "lr_finder.diverge_factor", "must be above 1")
    _check(f.rule in RULES, "lr_finder.rule", f"must be one of {', '.join(RULES)}")
    _check(f.min_divisor >= 1, "lr_finder.min_divisor", "must be at least 1")
    _check(f.edge_rise > 0, "lr_finder.edge_rise", f"must be positive, got {f.edge_rise}")
    _check(f.divergence_divisor >= 1, "lr_finder.divergence_divisor", "must be at least 1")
    _check(t.epochs >= 1, "train.epochs", f"must be at least 1, got {t.epochs}")
    _check(t.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}")
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        "train.device",
        f"must be auto, cpu or cuda[:N], got '{t.device}'",
    )
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
    _check(0 < t.ema_decay < 1, "train.ema_decay", f"must be in (0, 1), got {t.ema_decay}")
    _check(t.ema_bn_batches >= 0, "train.ema_bn_batches", "must be 0 or more")
    _check(bool(t.checkpoint_dir), "train.checkpoint_dir", "must name a directory")
    _check(t.log_every >= 0, "train.log_every", "must be 0 or more")
    _check(t.log_every_seconds >= 0, "train.log_every_seconds", "must be 0 or more")
    _check(t.progress in PROGRESS, "train.progress", f"must be one of {', '.join(PROGRESS)}")
    _check(t.price_per_gpu_hour >= 0, "train.price_per_gpu_hour", "must be 0 (unknown) or more")
    _check(t.save_every_minutes >= 0, "train.save_every_minutes", "must be 0 or more")
    _check(t.save_every_steps >= 0, "train.save_every_steps", "must be 0 or more")
    _check(t.max_bad_steps >= 1, "train.max_bad_steps", "must be at least 1")
    _check(t.sync_check in SYNC_CHECKS, "train.sync_check",
           f"must be one of {', '.join(SYNC_CHECKS)}, got '{t.sync_check}'")
    _check(t.accum_steps >= 1, "train.accum_steps", f"must be at least 1, got {t.accum_steps}")
    _check(
        not (o.scale_lr and o.max_lr == "auto"),
        "optim.scale_lr",
        "must be false with optim.max_lr: auto (the range test already measures the LR for "
        "this batch)",
    )
    _check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]")
    _check(d.decode_ahead >= 0, "data.decode_ahead", f"must be 0 or more, got {d.decode_ahead}")
    _check(d.decode in DECODE_MODES, "data.decode", f"must be one of {', '.join(DECODE_MODES)}, "
           f"got '{d.decode}'")


def check_data_dir(cfg: DataConfig) -> Path:
    """The data directory as a Path, or a one-line error saying how to get one."""
    p = Path(cfg.data_dir).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"data.data_dir: no such directory '{p}'; set data.data_dir to your ImageNet folder "
            f"(or run 'rn50 data demo {p}' for the small demo dataset)"
        )
    return p
