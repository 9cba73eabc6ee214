"""model.blurpool: FFCV's BlurPoolConv2d, where it goes, what it computes, and that a blurpool
checkpoint trains, evaluates, predicts and exports."""

import json

import pytest
import torch
import torchvision
from torch import nn

from rn50.checkpoint import load_checkpoint
from rn50.cli import main
from rn50.config import ModelConfig
from rn50.model import BlurPoolConv2d, apply_blurpool, build_model
from rn50.runlog import read_metrics
from rn50.serve.predict import load_for_inference
from rn50.train.loop import Trainer
from tests.conftest import demo48_config
from tests.serving import CLASSES, make_checkpoint

# Known answers, from FFCV's rule (stride > 1 and at least 16 input channels) applied by hand
# to torchvision's ResNets: the stem conv1 has 3 input channels; ResNet-50 (v1.5) strides the
# 3x3 conv2 of each stage's first bottleneck, ResNet-18 its basic block's conv1.
BLURRED = {
    "resnet50": [
        "layer2.0.conv2", "layer2.0.downsample.0",
        "layer3.0.conv2", "layer3.0.downsample.0",
        "layer4.0.conv2", "layer4.0.downsample.0",
    ],
    "resnet18": [
        "layer2.0.conv1", "layer2.0.downsample.0",
        "layer3.0.conv1", "layer3.0.downsample.0",
        "layer4.0.conv1", "layer4.0.downsample.0",
    ],
}


@pytest.mark.parametrize("arch", sorted(BLURRED))
def test_blurpool_wraps_ffcvs_convolutions(arch):
    with torch.device("meta"):
        model = build_model(ModelConfig(arch=arch, blurpool=True))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BlurPoolConv2d)]
    assert wrapped == BLURRED[arch]
    # Each wraps the strided convolution itself; nothing else changed.
    for name in wrapped:
        conv = model.get_submodule(name).conv
        assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2)
    assert not any(isinstance(m, BlurPoolConv2d) for m in build_model(
        ModelConfig(arch=arch, num_classes=10)).modules())


def test_blurpool_rule_on_a_small_network():
    """Stride 2 with 16 channels: blurred; 3 or 8 input channels, or stride 1: not."""
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2),   # 0: the stem case
        nn.Conv2d(16, 16, 3, stride=1),  # 1: no downsampling
        nn.Conv2d(16, 32, 1, stride=2),  # 2: blurred
        nn.Sequential(nn.Conv2d(8, 8, 3, stride=2), nn.Conv2d(32, 32, 3, stride=(1, 2))),
    )
    assert apply_blurpool(net) == ["2", "3.1"]
    assert isinstance(net[2], BlurPoolConv2d) and isinstance(net[3][1], BlurPoolConv2d)


def identity_conv(channels: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1, stride=stride, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    return conv


def test_blur_filter_on_known_inputs():
    """[1,2,1] x [1,2,1] / 16 with zero padding, by hand: an impulse gives the filter back;
    a constant 16 gives 16 x (the share of the filter inside the image): 9 at a corner, 12 on
    an edge, 16 inside; then the wrapped convolution (identity, stride 2) subsamples."""
    blur = BlurPoolConv2d(identity_conv(2, stride=1))
    assert blur.blur_filter.shape == (2, 1, 3, 3)
    impulse = torch.zeros(1, 2, 3, 3)
    impulse[0, 0, 1, 1] = 16.0
    out = blur(impulse)
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]))
    assert torch.equal(out[0, 1], torch.zeros(3, 3))  # depthwise: channels do not mix

    flat = torch.full((1, 2, 4, 4), 16.0)
    expected = torch.tensor(
        [[9.0, 12, 12, 9], [12, 16, 16, 12], [12, 16, 16, 12], [9, 12, 12, 9]]
    )
    assert torch.equal(BlurPoolConv2d(identity_conv(2, stride=1))(flat)[0, 1], expected)
    # Stride 2 keeps rows and columns 0 and 2 of the blurred map.
    strided = BlurPoolConv2d(identity_conv(2, stride=2))(flat)[0, 0]
    assert torch.equal(strided, torch.tensor([[9.0, 12], [12, 16]]))

    # Rows 0, 4, 8 along x: in the middle row the vertical [1,2,1]/4 sees three equal rows,
    # so only the horizontal [1,2,1]/4 acts, with a zero beyond each border:
    # x=0: (0 + 2*0 + 4) / 4 = 1; x=1: (0 + 2*4 + 8) / 4 = 4; x=2: (4 + 2*8 + 0) / 4 = 5.
    ramp = torch.tensor([0.0, 4, 8]).expand(1, 2, 3, 3)
    assert torch.equal(blur(ramp)[0, 0, 1], torch.tensor([1.0, 4, 5]))


def plain_key(key: str, blurred: list[str]) -> str | None:
    """The key of a blurpool model's tensor in the plain model (None: the blur filter)."""
    for name in blurred:
        if key == f"{name}.blur_filter":
            return None
        if key.startswith(f"{name}.conv."):
            return name + key[len(name) + len(".conv"):]
    return key


def test_blurpool_state_dict_and_initial_weights():
    """FFCV's keys (<conv>.conv.weight, <conv>.blur_filter) and, for the same seed, the same
    initial weights as the plain network: the blur draws no random numbers."""
    torch.manual_seed(0)
    blur = build_model(ModelConfig(arch="resnet18", num_classes=10, blurpool=True)).state_dict()
    torch.manual_seed(0)
    plain = build_model(ModelConfig(arch="resnet18", num_classes=10)).state_dict()
    filters = [k for k in blur if k.endswith("blur_filter")]
    assert filters == [f"{n}.blur_filter" for n in BLURRED["resnet18"]]
    mapped = {plain_key(k, BLURRED["resnet18"]): v for k, v in blur.items() if k not in filters}
    assert mapped.keys() == plain.keys()
    for k, v in plain.items():
        assert torch.equal(mapped[k], v), k
    assert blur["layer2.0.conv1.blur_filter"].shape == (64, 1, 3, 3)
    assert blur["layer4.0.downsample.0.blur_filter"].shape == (256, 1, 3, 3)


def test_blurpool_checkpoint_predicts_and_exports(tmp_path, capsys):
    """A blurpool checkpoint: predict and export build it from its stored config; the
    safetensors file says which network it loads into, and loads into that one only."""
    from safetensors.torch import load_file

    ckpt = make_checkpoint(tmp_path / "blur.pth", resolution=32, blurpool=True)
    model, cfg, info = load_for_inference(ckpt)
    assert cfg.model.blurpool and info.extra == {"blurpool": True}
    assert isinstance(model.get_submodule("layer2.0.conv1"), BlurPoolConv2d)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "safetensors"]) == 0
    out = capsys.readouterr().out
    assert "with FFCV's BlurPool (model.blurpool: true)" in out
    assert "build_model(ModelConfig(arch='resnet18', num_classes=8, blurpool=True))" in out
    assert json.loads((tmp_path / "blur.classes.json").read_text())["extra"] == {"blurpool": True}
    weights = load_file(tmp_path / "blur.safetensors")
    rebuilt = build_model(ModelConfig(arch="resnet18", num_classes=len(CLASSES), blurpool=True))
    rebuilt.load_state_dict(weights, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))
    with pytest.raises(RuntimeError):
        torchvision.models.resnet18(num_classes=len(CLASSES)).load_state_dict(weights)
    # The Space's PyTorch backend builds torchvision's network: refused, one line, exit 2.
    rc = main(["export", "--checkpoint", str(ckpt), "--space", str(tmp_path / "space"),
               "--space-backend", "torch"])
    err = capsys.readouterr().err
    assert rc == 2 and "use --space-backend onnx" in err and not (tmp_path / "space").exists()


def test_plain_export_names_torchvisions_network(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "plain.pth", resolution=32)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "safetensors"]) == 0
    out = capsys.readouterr().out
    assert "Architecture: torchvision.models.resnet18(num_classes=8)" in out


def test_blurpool_trains_and_evaluates(demo48, tmp_path, capsys):
    """model.blurpool trains on the demo data (every blur filter left as it was: a buffer,
    not a parameter), and `rn50 eval` on its checkpoint measures what the run logged."""
    cfg = demo48_config(
        demo48, tmp_path / "run",
        model={"arch": "resnet18", "blurpool": True}, train={"epochs": 1, "precision": "bf16"},
    )
    trainer = Trainer(cfg)
    initial = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    record = trainer.fit()
    assert record["step"] == 6 and record["train_images"] == 48
    state = load_checkpoint(tmp_path / "run" / "checkpoint_epoch_001.pth")
    weights = state["model"]
    assert not weights["layer2.0.conv1.conv.weight"].equal(initial["layer2.0.conv1.conv.weight"])
    for name in BLURRED["resnet18"]:
        assert weights[f"{name}.blur_filter"].equal(initial[f"{name}.blur_filter"])
    ckpt = tmp_path / "run" / "checkpoint_epoch_001.pth"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert f"Val Loss: {logged['val_loss']:.4f} Top-1: {logged['val_top1']:.2f}%" in out


def test_the_summary_gives_its_units_as_letters():
    """torchinfo's table ends with the totals: ResNet-18 at 224 px has 11,689,512 parameters
    and 1.81 G mult-adds (torchvision's figure: 1.81 GFLOPS), its unit a letter, never the
    enum's name ("Units.GIGABYTES") torchinfo 1.8 writes on Python 3.11."""
    from rn50.model import model_summary, plain_units

    table = model_summary(ModelConfig(arch="resnet18", num_classes=1000), 1, 224)
    assert "Total params: 11,689,512" in table
    assert "Total mult-adds (G): 1.81" in table and "Units." not in table
    assert plain_units("Total mult-adds (Units.MEGABYTES): 296.18\n(Units.TERABYTES)") == (
        "Total mult-adds (M): 296.18\n(T)")
