import dataclasses
import re
from pathlib import Path

import pytest

from rn50.config import Config, OptimConfig, describe, field_docs, from_dict, load_config
from rn50.errors import ConfigError


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("optim:\n  max_lr: 0.2\n  three_phase: false\ndata:\n  batch_size: 128\n")
    cfg = load_config(f, ["optim.max_lr=0.5", "train.precision=fp16"])
    assert cfg.optim.max_lr == 0.5  # --set wins over the file
    assert cfg.optim.three_phase is False  # from the file
    assert cfg.data.batch_size == 128
    assert cfg.train.precision == "fp16"
    assert cfg.optim.div_factor == 25.0  # untouched default
    assert isinstance(load_config(None, ["optim.max_lr=1"]).optim.max_lr, float)


def test_reference_keys_all_exist():
    keys = {k for section in Config().to_dict().values() for k in section}
    reference = {
        "batch_size",
        "workers",
        "epochs",
        "optimizer",
        "momentum",
        "weight_decay",
        "max_lr",
        "pct_start",
        "div_factor",
        "final_div_factor",
        "three_phase",
        "base_momentum",
        "max_momentum",
        "cycle_momentum",
        "num_classes",
        "data_dir",
        "checkpoint_dir",
        "resume",
        "initial_model_path",
    }
    assert reference <= keys


def test_every_field_is_documented():
    for section in Config().to_dict():
        cls = type(getattr(Config(), section))
        docs = field_docs(cls)
        assert set(docs) == set(getattr(Config(), section).__dataclass_fields__), section
    assert "peak learning rate" in describe()


def test_round_trip_through_dict():
    cfg = load_config(None, ["optim.max_lr=0.3", "model.num_classes=10"])
    assert from_dict(cfg.to_dict()) == cfg
    assert from_dict({"optim": {"max_lr": 0.3, "gone_key": 1}}).optim == OptimConfig(max_lr=0.3)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.max_lrr=1", "unknown config key 'optim.max_lrr' (did you mean 'optim.max_lr'?)"),
        ("optimizer.max_lr=1", "unknown config key 'optimizer'"),
        ("optim.max_lr=fast", "optim.max_lr must be a number or auto, got 'fast'"),
        ("data.batch_size=12.5", "data.batch_size must be an integer"),
        ("optim.three_phase=maybe", "optim.three_phase must be true or false"),
        ("optim.pct_start=1.5", "optim.pct_start must be in (0, 1)"),
        ("optim.max_lr=-1", "optim.max_lr must be positive"),
        ("data.batch_size=0", "data.batch_size must be at least 1"),
        ("train.precision=fp8", "train.precision must be one of"),
        ("optim.base_momentum=0.99", "optim.base_momentum must not exceed optim.max_momentum"),
        ("max_lr=1", "--set expects SECTION.KEY=VALUE"),
        ("optim.final_div_factor=1e-4", "optim.final_div_factor must be at least 1"),
        ("data.decode=nvjpeg", "data.decode must be one of auto, cpu, gpu, pil, got 'nvjpeg'"),
        ("data.decode_ahead=-1", "data.decode_ahead must be 0 or more, got -1"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  max_lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(top)


def test_the_readme_lists_every_config_key():
    # README's Configuration table is what users read to find a key: a key added to a section
    # (or renamed) must show up there.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = {}
    for line in readme.splitlines():
        m = re.fullmatch(r"\| `(\w+)` \| ((?:`\w+`(?:, )?)+) \|", line)
        if m:
            listed[m.group(1)] = re.findall(r"`(\w+)`", m.group(2))
    for section in dataclasses.fields(Config):
        keys = [f.name for f in dataclasses.fields(getattr(Config(), section.name))]
        assert listed.get(section.name) == keys, section.name
