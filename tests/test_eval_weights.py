"""`rn50 eval --weights`: a torchvision-format state_dict scores exactly as an rn50 checkpoint
holding the same weights; ImageNet-1k's class order is checked, and bad files are one line."""

import dataclasses
import re

import pytest
import torch
import torchvision
import yaml

from rn50.checkpoint import save_checkpoint, strip_prefixes
from rn50.cli import main
from rn50.config import load_config
from rn50.data.layout import find_dataset
from rn50.imagenet import check_imagenet_classes, imagenet_wnids
from rn50.train import evaluate

VAL_LINES = re.compile(r"Val images: \d+\nVal Loss: .*\n")


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def write_config(path, tiny_data, **model) -> str:
    cfg = {
        "data": {"data_dir": str(tiny_data), "resolution": 32, "batch_size": 4, "workers": 0},
        "model": {"arch": "resnet18", **model},
        "train": {"precision": "fp32", "device": "cpu", "progress": "off"},
    }
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def torchvision_weights(num_classes: int, seed: int = 0) -> dict:
    """A randomly initialized torchvision resnet18 as a user would torch.save its state_dict;
    BatchNorm statistics made non-trivial so that eval mode matters."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


@pytest.fixture(scope="module")
def three_class(tmp_path_factory, tiny_data):
    """(config file, weights file, the same weights in an rn50 checkpoint) for tiny_data."""
    tmp = tmp_path_factory.mktemp("weights")
    config = write_config(tmp / "cfg.yaml", tiny_data, num_classes=3)
    weights = torchvision_weights(3)
    torch.save(weights, tmp / "resnet18.pth")
    cfg = load_config(config)
    index = find_dataset(tiny_data)
    ckpt = save_checkpoint(
        {"epoch": 1, "model": weights, "config": cfg.to_dict(), "classes": list(index.classes),
         "names": list(index.names)},
        tmp / "model.pth",
    )
    return config, tmp / "resnet18.pth", ckpt


def test_same_numbers_as_the_checkpoint(capsys, three_class, tmp_path):
    config, weights, ckpt = three_class
    rc, out, err = run(capsys, "eval", "--weights", weights, "--config", config)
    assert rc == 0, err
    assert f"Weights: {weights} (resnet18, 3 classes)" in out
    assert ("Transform: short side resized to 36 px, center crop 32 px (torchvision's for its "
            "ResNet-50 weights: 256, 224); flip TTA off") in out
    rc, ref, err = run(capsys, "eval", "--checkpoint", ckpt)
    assert rc == 0, err
    assert VAL_LINES.search(out).group() == VAL_LINES.search(ref).group()
    assert "Val images: 12\n" in out

    # The same weights behind DDP's and torch.compile's prefixes, and as safetensors.
    from safetensors.torch import save_file

    state = torch.load(weights, weights_only=True)
    wrapped = {f"_orig_mod.module.{k}": v for k, v in state.items()}
    torch.save({"state_dict": wrapped}, tmp_path / "wrapped.pth")
    save_file(state, tmp_path / "w.safetensors")
    for other in (tmp_path / "wrapped.pth", tmp_path / "w.safetensors"):
        rc, again, err = run(capsys, "eval", "--weights", other, "--config", config)
        assert rc == 0, err
        assert VAL_LINES.search(again).group() == VAL_LINES.search(ref).group()

    # Other weights score otherwise: the comparison above can fail.
    torch.save(torchvision_weights(3, seed=1), tmp_path / "other.pth")
    rc, other, _ = run(capsys, "eval", "--weights", tmp_path / "other.pth", "--config", config)
    assert rc == 0 and VAL_LINES.search(other).group() != VAL_LINES.search(ref).group()


def test_strip_prefixes():
    keys = {"module._orig_mod.fc.weight": 1, "module._orig_mod.bn1.module.x": 3}
    assert list(strip_prefixes(keys)) == ["fc.weight", "bn1.module.x"]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: torch.save(torchvision_weights(5), p),
         "weight 'fc.weight' has shape 5x512 in the file but 3x512 in the model; pass the "
         "weights of resnet18 with 3 classes"),
        (lambda p: torch.save({k: v for k, v in torchvision_weights(3).items()
                               if not k.startswith("layer4")}, p),
         "the weights do not fit the model: 30 missing (first: 'layer4.0.conv1.weight')"),
        (lambda p: torch.save({**torchvision_weights(3), "extra.weight": torch.zeros(1)}, p),
         "1 unexpected (first: 'extra.weight')"),
        (lambda p: torch.save([1, 2, 3], p), "does not hold a state_dict"),
        (lambda p: p.write_text("not a weights file"), "is not a loadable weights file"),
        (lambda p: torch.save({"fc": torch.nn.Linear(2, 2)}, p), "holds pickled Python objects"),
    ],
    ids=["wrong-shape", "missing", "unexpected", "a-list", "text", "pickled-module"],
)
def test_bad_weights_are_one_line(capsys, three_class, tmp_path, make, words):
    config = three_class[0]
    bad = tmp_path / "bad.pth"
    make(bad)
    rc, out, err = run(capsys, "eval", "--weights", bad, "--config", config)
    assert rc == 2 and out == ""
    assert err.startswith("rn50: error: ") and err.count("\n") == 1 and words in err, err


def test_eval_needs_one_of_checkpoint_or_weights(capsys, three_class):
    config, weights, ckpt = three_class
    with pytest.raises(SystemExit) as e:
        main(["eval", "--weights", str(weights), "--checkpoint", str(ckpt)])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    rc, _, err = run(capsys, "eval", "--weights", weights.parent / "none.pth", "--config", config)
    assert rc == 2 and "no weights file at" in err


def test_the_imagenet_wnids():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and list(wnids) == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    # Known positions (torchvision's categories): tench, the two cranes, toilet tissue.
    assert (wnids[0], wnids[134], wnids[517], wnids[999]) == (
        "n01440764", "n02012849", "n03126707", "n15075141")


def test_a_val_set_of_other_classes_is_refused(capsys, tiny_data, tmp_path):
    """With model.num_classes 1000 (ImageNet weights), tiny_data's 3 classes: one line."""
    torch.save(torchvision_weights(1000), tmp_path / "w.pth")
    config = write_config(tmp_path / "cfg.yaml", tiny_data)
    rc, out, err = run(capsys, "eval", "--weights", tmp_path / "w.pth", "--config", config)
    assert rc == 2 and out == ""
    assert "has 3 classes, but ImageNet-1k weights need ImageNet's 1000" in err
    assert err.count("\n") == 1


@pytest.fixture
def imagenet_like(monkeypatch, tiny_data):
    """tiny_data's val images under a 1000-class index whose class ids are given by the test:
    labels 0-2 of the files then mean the first three ids."""
    real = find_dataset(tiny_data)

    def install(classes):
        index = dataclasses.replace(real, classes=tuple(classes), names=tuple(classes))
        monkeypatch.setattr(evaluate, "load_index", lambda cfg, n: index)

    return install


def test_imagenet_order_passes_and_scores(capsys, tiny_data, tmp_path, imagenet_like):
    weights = torchvision_weights(1000)
    torch.save(weights, tmp_path / "w.pth")
    config = write_config(tmp_path / "cfg.yaml", tiny_data)
    imagenet_like(imagenet_wnids())
    rc, out, err = run(capsys, "eval", "--weights", tmp_path / "w.pth", "--config", config)
    assert rc == 0, err
    # The numbers: tiny_data's val images through torchvision's model and rn50's transform.
    from rn50.data.batch import normalize
    from rn50.data.image import load_rgb
    from rn50.data.transforms import EvalTransform

    model = torchvision.models.resnet18(num_classes=1000)
    model.load_state_dict(weights)
    model.eval()
    val = find_dataset(tiny_data).val
    x = normalize(torch.stack([EvalTransform(32)(load_rgb(p)) for p, _ in val]), False)
    y = torch.tensor([label for _, label in val])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    assert float(re.search(r"Val Loss: (\S+)", out).group(1)) == pytest.approx(loss, abs=2e-4)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda w: w[:5] + (w[6], w[5]) + w[7:],
         "class 5 is 'n01498041' where the weights expect 'n01496331' ('n01498041' is out of "
         "order)"),
        (lambda w: ("n00000001",) + w[1:], "class 0 is 'n00000001' where the weights expect "
         "'n01440764' ('n00000001' is not an ImageNet-1k wnid)"),
        (lambda w: w[:999], "has 999 classes, but ImageNet-1k weights need ImageNet's 1000"),
    ],
    ids=["swapped", "foreign-id", "999-classes"],
)
def test_imagenet_order_mismatch_is_one_line(capsys, tiny_data, tmp_path, imagenet_like, change,
                                             words):
    torch.save(torchvision_weights(1000), tmp_path / "w.pth")
    config = write_config(tmp_path / "cfg.yaml", tiny_data)
    imagenet_like(change(imagenet_wnids()))
    rc, out, err = run(capsys, "eval", "--weights", tmp_path / "w.pth", "--config", config)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert words in err, err


def test_check_imagenet_classes_accepts_the_list():
    check_imagenet_classes(list(imagenet_wnids()), "/data/imagenet")  # no error
