import pytest

from rn50.config import DataConfig, load_config
from rn50.data.schedule import eval_resolution, resolution_at
from rn50.errors import ConfigError


def test_ramp_by_hand():
    # 160 px through epoch 2, 224 px from epoch 8; between: 160 + 64*(e-2)/6, rounded to 32.
    cfg = DataConfig(resolution=224, min_resolution=160, ramp_start_epoch=2, ramp_end_epoch=8)
    got = [resolution_at(e, cfg) for e in range(1, 11)]
    #        e=1  2    3    4    5    6    7    8    9    10
    assert got == [160, 160, 160, 192, 192, 192, 224, 224, 224, 224]
    # e=3: 170.7 -> 160; e=4: 181.3 -> 192; e=6: 202.7 -> 192; e=7: 213.3 -> 224


def test_off_and_eval_resolution():
    assert [resolution_at(e, DataConfig(resolution=128)) for e in (1, 50)] == [128, 128]
    assert eval_resolution(DataConfig(resolution=192)) == 192
    assert eval_resolution(DataConfig(resolution=192, eval_resolution=256)) == 256


def test_bad_ramps_are_config_errors():
    with pytest.raises(ConfigError, match="data.min_resolution must be between 16"):
        load_config(None, ["data.min_resolution=256"])
    with pytest.raises(ConfigError, match="data.ramp_end_epoch must be larger"):
        load_config(
            None, ["data.min_resolution=160", "data.ramp_start_epoch=5", "data.ramp_end_epoch=5"]
        )
