"""curves.png after every epoch, and `rn50 data show`'s grid of training samples."""

import numpy as np
import pytest
import torch
from PIL import Image

from rn50.cli import main
from rn50.data.batch import normalize
from rn50.data.show import denormalize, draw_samples, short_name
from rn50.plots import CURVES_SIZE, grid_size_px, save_curves
from tests.conftest import tiny_config


def colours(path) -> int:
    """Distinct RGB colours in a PNG: 1 for a blank image, hundreds for a drawn plot."""
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def test_the_run_dir_has_curves_png(straight_run):
    path = straight_run / "curves.png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == CURVES_SIZE == (1200, 900)
    assert colours(path) > 100


def test_curves_of_records_size_and_ink(tmp_path):
    metrics = [
        {
            "epoch": e,
            "step": 10 * e,
            "train_loss": 2 / e,
            "val_loss": 2.2 / e,
            "train_top1": 30 * e,
            "val_top1": 28 * e,
            "train_top5": 60 + e,
            "val_top5": 58 + e,
        }
        for e in (1, 2, 3)
    ]
    steps = [{"step": s, "lr": s / 30, "momentum": 0.95 - s / 300} for s in range(1, 31)]
    path = save_curves(metrics, steps, tmp_path / "c.png", title="t", size=(640, 480))
    with Image.open(path) as img:
        assert img.size == (640, 480)
    blank = save_curves([], [], tmp_path / "empty.png", size=(640, 480))
    assert colours(path) > colours(blank) > 1  # the curves add ink, the axes alone have some


@pytest.mark.parametrize("decode", ["cpu", "pil"])
def test_samples_are_the_first_batch_the_trainer_sees(tiny_data, tmp_path, decode):
    from rn50.train.loaders import load_index, train_loader
    from rn50.train.runtime import make_runtime

    cfg = tiny_config(tiny_data, tmp_path / "run", data={"hflip": True, "decode": decode})
    x, labels, names = draw_samples(cfg, 8)
    loader = train_loader(cfg.data, load_index(cfg.data, 3), cfg.train.seed, make_runtime(cfg))
    loader.sampler.set_epoch(1)
    images, targets, _ = next(iter(loader))
    assert torch.equal(denormalize(x), images)  # what the model is fed, back as pixels
    assert labels == targets.tolist()
    assert names == ("class_0", "class_1", "class_2")


def test_denormalize_inverts_normalize_exactly():
    pixels = torch.randint(0, 256, (4, 3, 9, 9), dtype=torch.uint8)
    assert torch.equal(denormalize(normalize(pixels, channels_last=False)), pixels)


def test_data_show_writes_a_titled_grid(tiny_data, tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tiny_data, tmp_path / "run")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(cfg.to_yaml())
    titles = []
    import rn50.plots

    real = rn50.plots.save_grid

    def spy(images, tile_titles, path):
        titles.extend(tile_titles)
        return real(images, tile_titles, path)

    monkeypatch.setattr(rn50.plots, "save_grid", spy)
    assert main(["data", "show", "--config", str(config_file), "--count", "5"]) == 0
    out = tmp_path / "run" / "samples.png"  # the default: in the run dir
    assert f"Wrote {out}" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == grid_size_px(5) == (600, 460)  # 3 x 2 tiles of 200 x 230 px
    assert colours(out) > 50
    _, labels, names = draw_samples(cfg, 5)
    assert titles == [names[y] for y in labels]


def test_data_show_errors(tiny_data, tmp_path, capsys):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(tiny_config(tiny_data, tmp_path / "run").to_yaml())
    assert main(["data", "show", "-c", str(config_file), "--count", "0"]) == 2
    assert "--count must be at least 1" in capsys.readouterr().err
    assert main(["data", "show", "-c", str(config_file), "--set", "data.data_dir=/nope"]) == 2
    assert "no such directory '/nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, short",
    [("tench, Tinca tinca", "tench"), ("class_0", "class_0"), ("x" * 30, "x" * 21 + "\u2026")],
)
def test_short_name(name, short):
    assert short_name(name) == short
