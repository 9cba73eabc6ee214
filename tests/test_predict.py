"""rn50 predict: known top-5 answers, the eval transform, image checks, safe loading, the CLI."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rn50.cli import main
from rn50.data.batch import normalize as torch_normalize
from rn50.data.image import MAX_PIXELS, ImageError, load_rgb, open_image
from rn50.data.transforms import EvalTransform
from rn50.serve.predict import Predictor, load_for_inference
from rn50.serve.space_template.inference import eval_crop, normalize
from tests.conftest import tiny_config
from tests.serving import CLASSES, bad_files, jpeg_bytes, make_checkpoint, noise_image, photo

# Known answer: a model whose last layer ignores the image and outputs log(P).
P = [0.04, 0.30, 0.02, 0.10, 0.03, 0.25, 0.20, 0.06]
TOP5 = [1, 5, 6, 3, 7]  # indices of P in decreasing order: both "crane"s are in it


@pytest.fixture(scope="module")
def known_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("known") / "model.pth", probabilities=P)


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("random") / "model.pth", resolution=40)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("coffee", "chelsea", "rocket"):
        paths.append(folder / f"{name}.jpg")
        paths[-1].write_bytes(jpeg_bytes(photo(name)))
    return paths


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_top5_is_the_known_answer(known_ckpt, photos):
    predictor = Predictor.from_checkpoint(known_ckpt)
    for preds in predictor.predict([load_rgb(str(p)) for p in photos]):
        assert [p.index for p in preds] == TOP5
        assert [p.wnid for p in preds] == [CLASSES[i][0] for i in TOP5]
        assert [p.name for p in preds] == [CLASSES[i][1] for i in TOP5]
        assert [p.probability for p in preds] == pytest.approx([P[i] for i in TOP5], abs=1e-6)


def test_cli_table_and_json(capsys, known_ckpt, photos):
    rc, out, err = run_cli(capsys, "predict", "--checkpoint", known_ckpt, *photos[:2])
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == str(photos[0]) and lines[6] == str(photos[1])
    assert lines[1].split() == ["1.", "n01443537", "goldfish", "30.00%"]
    assert lines[2].split()[:3] == ["2.", "n02123045", "tabby,"] and lines[2].endswith("25.00%")
    assert lines[4].split() == ["4.", "n02012849", "crane", "10.00%"]
    assert lines[5].split() == ["5.", "n03126707", "crane", "6.00%"]

    rc, out, _ = run_cli(capsys, "predict", "--checkpoint", known_ckpt, "--json", "--top", "3",
                         photos[2])
    assert rc == 0
    [record] = json.loads(out)
    assert record["image"] == str(photos[2])
    assert [t["rank"] for t in record["top"]] == [1, 2, 3]
    assert [t["index"] for t in record["top"]] == TOP5[:3]
    names = ["goldfish", "tabby, tabby cat", "African elephant"]
    assert [t["name"] for t in record["top"]] == names
    assert [t["probability"] for t in record["top"]] == pytest.approx([0.30, 0.25, 0.20], abs=1e-6)


def test_predict_sees_what_eval_sees(tmp_path, tiny_data):
    """A trained checkpoint: predictions equal the eval pipeline's softmax, computed here from
    load_rgb + EvalTransform + normalize + the checkpoint's weights."""
    from rn50.train.loop import fit

    run = tmp_path / "run"
    fit(tiny_config(tiny_data, run, model={"arch": "resnet18"}, train={"epochs": 1}))
    ckpt = run / "model_best.pth"
    model, cfg, info = load_for_inference(ckpt)
    assert info.classes == ["class_0", "class_1", "class_2"] and cfg.data.resolution == 32
    files = sorted((tiny_data / "val").rglob("*.jpg"))
    transform = EvalTransform(cfg.data.resolution, cfg.data.crop_ratio)
    batch = torch_normalize(torch.stack([transform(load_rgb(str(f))) for f in files]), False)
    with torch.no_grad():
        expected = torch.softmax(model(batch).double(), 1).numpy()
    got = Predictor.from_checkpoint(ckpt).probabilities([load_rgb(str(f)) for f in files])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()


@pytest.mark.parametrize("resolution, crop_ratio", [(224, 0.875), (48, 0.875), (40, 1.0)])
@pytest.mark.parametrize("size", [(451, 300), (300, 451), (256, 256), (50, 47), (9, 700)])
def test_numpy_preprocessing_equals_eval_transform(resolution, crop_ratio, size):
    """The torch-free path (ONNX, Space) crops and normalizes exactly as training's eval."""
    img = noise_image(*size, seed=size[0])
    expected = EvalTransform(resolution, crop_ratio)(img)  # uint8 CHW
    crop = eval_crop(img, resolution, crop_ratio)
    assert crop.shape == (resolution, resolution, 3)
    np.testing.assert_array_equal(crop, expected.permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(
        normalize(crop[None]), torch_normalize(expected[None], channels_last=False).numpy()
    )


def test_numpy_preprocessing_on_a_photo():
    img = photo("chelsea")
    np.testing.assert_array_equal(
        eval_crop(img, 224, 0.875), EvalTransform(224, 0.875)(img).permute(1, 2, 0).numpy()
    )


@pytest.mark.parametrize("name", ["text", "empty", "truncated", "html", "one_pixel", "huge"])
def test_bad_images_are_refused_with_a_reason(tmp_path, name):
    path, words = bad_files(tmp_path)[name]
    with pytest.raises(ImageError, match=words):
        open_image(path)
    with pytest.raises(ImageError, match=words):
        open_image(path.read_bytes())


def test_limits_are_checked_before_decoding(tmp_path):
    """A PNG header with no pixel data at all: refused for its size, so it was never decoded
    (decoding would fail with "truncated")."""
    import struct

    from tests.serving import png_chunk

    def header_only(w, h):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")

    assert 10001 * 10000 > MAX_PIXELS  # just over the limit, under Pillow's own bomb limit
    with pytest.raises(ImageError, match=r"too large \(10001x10000 px\)"):
        open_image(header_only(10001, 10000))
    with pytest.raises(ImageError, match=r"is 7x100 px; at least 8x8"):
        open_image(header_only(7, 100))
    with pytest.raises(ImageError, match="truncated"):
        open_image(header_only(100, 100))
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "missing.jpg")


def _roundtrip(img: Image.Image, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_cmyk_jpeg_keeps_its_colours():
    red = Image.new("RGB", (64, 64), (220, 20, 20))
    rgb, note = open_image(_roundtrip(red.convert("CMYK"), "JPEG", quality=95))
    assert rgb.mode == "RGB" and "CMYK" in note
    assert np.abs(np.asarray(rgb).astype(int) - [220, 20, 20]).max() <= 8


def test_16bit_grayscale_is_scaled_not_clipped():
    # Half of full scale in 16 bits is mid-gray; Pillow's plain convert("RGB") makes it white.
    a = np.full((32, 32), 32896, dtype=np.uint16)  # 128 * 257
    rgb, note = open_image(_roundtrip(Image.fromarray(a), "PNG"))
    assert "16-bit" in note
    assert np.unique(np.asarray(rgb)).tolist() == [128]


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent black
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))  # left half opaque blue
    rgb, note = open_image(_roundtrip(rgba, "PNG"))
    a = np.asarray(rgb)
    assert "flattened onto white" in note
    assert a[:, :8].tolist() == [[[0, 0, 255]] * 8] * 16
    assert a[:, 8:].tolist() == [[[255, 255, 255]] * 8] * 16
    la, _ = open_image(_roundtrip(Image.new("LA", (16, 16), (0, 0)), "PNG"))
    assert np.unique(np.asarray(la)).tolist() == [255]


def test_palette_images_keep_their_colours():
    img = noise_image(20, 20).convert("P", palette=Image.ADAPTIVE, colors=16)
    rgb, _ = open_image(_roundtrip(img, "PNG"))
    np.testing.assert_array_equal(np.asarray(rgb), np.asarray(img.convert("RGB")))
    gif, _ = open_image(_roundtrip(img, "GIF", transparency=0))
    a = np.asarray(gif)
    index0 = np.asarray(img) == 0
    assert index0.any() and (a[index0] == 255).all()  # the transparent index shows white


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rgb, _ = open_image(_roundtrip(img, "JPEG", exif=exif.tobytes()))
    assert rgb.size == (20, 60)


def test_cli_bad_image_one_line_each_exit_2(capsys, tmp_path, known_ckpt, photos):
    bad = bad_files(tmp_path)
    rc, out, err = run_cli(
        capsys, "predict", "--checkpoint", known_ckpt, bad["text"][0], photos[0], bad["huge"][0]
    )
    assert rc == 2
    assert out.splitlines()[0] == str(photos[0])  # the good image is still classified
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"rn50: error: {bad['text'][0]}: not an image")
    assert lines[1].startswith(f"rn50: error: {bad['huge'][0]}: the image is too large")
    rc, out, _ = run_cli(capsys, "predict", "--checkpoint", known_ckpt, "--json", bad["empty"][0])
    assert rc == 2 and "empty" in json.loads(out)[0]["error"]


def _one_error_line(capsys, *argv) -> str:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rn50: error: "), err
    return lines[0]


def test_not_a_checkpoint(capsys, tmp_path, photos):
    assert "is not a loadable rn50 checkpoint" in _one_error_line(
        capsys, "predict", "--checkpoint", photos[0], photos[0]
    )
    assert "no checkpoint at" in _one_error_line(
        capsys, "predict", "--checkpoint", tmp_path / "none.pth", photos[0]
    )
    torch.save({"model": {}}, tmp_path / "plain.pth")  # a torch file, not from rn50
    assert "is not an rn50 checkpoint" in _one_error_line(
        capsys, "predict", "--checkpoint", tmp_path / "plain.pth", photos[0]
    )


def test_weights_without_classes(capsys, tmp_path, photos):
    from rn50.checkpoint import save_checkpoint

    save_checkpoint({"model": {}}, tmp_path / "initial_model.pth")  # what fit writes first
    assert "holds weights only" in _one_error_line(
        capsys, "predict", "--checkpoint", tmp_path / "initial_model.pth", photos[0]
    )


def test_wrong_class_count(capsys, tmp_path, photos):
    from rn50.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(make_checkpoint(tmp_path / "ok.pth"))
    state["classes"] = state["classes"][:5]  # 5 class names, 8 outputs
    state["names"] = state["names"][:5]
    save_checkpoint(state, tmp_path / "names.pth")
    line = _one_error_line(capsys, "predict", "--checkpoint", tmp_path / "names.pth", photos[0])
    assert "trained for 5 classes" in line

    state = load_checkpoint(tmp_path / "ok.pth")
    state["model"]["fc.weight"] = state["model"]["fc.weight"][:6]  # weights for 6 classes
    state["model"]["fc.bias"] = state["model"]["fc.bias"][:6]
    save_checkpoint(state, tmp_path / "weights.pth")
    line = _one_error_line(capsys, "app", "--checkpoint", tmp_path / "weights.pth")
    assert "weight 'fc.weight' has shape 6x512 in the file but 8x512 in the model" in line
    assert "resnet18 with 8 classes" in line


def test_a_pickle_payload_never_runs(capsys, tmp_path, photos):
    """weights_only loading: a checkpoint that would run code when unpickled is refused."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "rn50-checkpoint", "model": Payload()}, tmp_path / "evil.pth")
    line = _one_error_line(capsys, "predict", "--checkpoint", tmp_path / "evil.pth", photos[0])
    assert "holds pickled Python objects (e.g. posix.system)" in line
    assert "will not unpickle it" in line and "weights_only" not in line
    assert not marker.exists()
