"""One image reader: every kind of file that changes pixels, read by every path, gives the
same pixels.

Kinds: EXIF orientations 1-8 (JPEG; and on a CMYK JPEG and a PNG, which take the PIL
fallback of the cpu and gpu modes), CMYK JPEG, grayscale JPEG, 16-bit PNG, RGBA PNG, palette
PNG with a transparent index, LA PNG, a PNG named .JPEG, a progressive JPEG.
Paths: the reader (rn50.data.image.load_rgb), predict's reader (open_image), the train and
eval transforms of each decode mode (pil, cpu, gpu run on the CPU), predict's preprocessing
(torch and numpy), `data check`'s classification and `data prepare`'s copy.

The known answers do not come from the reader under test: JPEG kinds are Pillow's decode
followed by Pillow's ImageOps.exif_transpose; lossless kinds are computed by hand from the
pixels that were written.
"""

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from rn50.data import decode, gpu, image
from rn50.data.check.report import format_report
from rn50.data.check.scan import check_dataset, check_file
from rn50.data.image import load_rgb, open_image
from rn50.data.layout import find_dataset
from rn50.data.loader import ImageDataset
from rn50.data.pipeline import transforms_for
from rn50.data.prepare import prepare_file
from rn50.data.transforms import EvalTransform, TrainTransform
from rn50.serve.space_template.inference import eval_crop

H, W = 24, 40  # stored size; orientations 5-8 stand as 40 x 24
R = 16  # output side: the crops (<= 40 px) are under 2R, so the cpu mode decodes at full scale
SEEDS = (3, 4, 5)
MODES = ("pil", "cpu", "gpu")
CPU = torch.device("cpu")


def base() -> np.ndarray:
    """Gradients in x (red) and y (green) and a block (blue): every transpose and flip of it
    differs from the others by tens of levels."""
    y, x = np.mgrid[0:H, 0:W]
    a = np.zeros((H, W, 3), np.uint8)
    a[..., 0] = x * 255 // (W - 1)
    a[..., 1] = y * 255 // (H - 1)
    a[..., 2] = np.where((x < 12) & (y < 8), 230, 40)
    return a


def exif(turn: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = turn
    return e.tobytes()


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pil_answer(data: bytes) -> np.ndarray:
    """Pillow's own decode, turned by Pillow's exif_transpose, converted by Pillow."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def kinds() -> dict[str, tuple[str, bytes, np.ndarray, set[str]]]:
    """name -> (suffix, file bytes, known upright RGB pixels, `data check` problems)."""
    a = base()
    rgb = Image.fromarray(a)
    out = {}
    for turn in range(1, 9):
        data = save(rgb, "JPEG", quality=95, exif=exif(turn))
        out[f"exif{turn}"] = (".JPEG", data, pil_answer(data),
                              set() if turn == 1 else {"exif_rotated"})
    data = save(rgb.convert("CMYK"), "JPEG", quality=95, exif=exif(6))
    out["exif6_cmyk"] = (".JPEG", data, pil_answer(data), {"cmyk", "exif_rotated"})
    # Lossless: orientation 6 is "rotate 90 degrees clockwise to display".
    out["exif6_png"] = (".png", save(rgb, "PNG", exif=exif(6)), np.rot90(a, -1),
                        {"exif_rotated"})
    data = save(rgb.convert("CMYK"), "JPEG", quality=95)
    out["cmyk"] = (".JPEG", data, pil_answer(data), {"cmyk"})
    data = save(rgb.convert("L"), "JPEG", quality=95)
    out["grayscale"] = (".JPEG", data, pil_answer(data), {"grayscale"})
    data = save(rgb, "JPEG", quality=95, progressive=True)
    out["progressive"] = (".JPEG", data, pil_answer(data), set())
    out["png_as_jpeg"] = (".JPEG", save(rgb, "PNG"), a, {"not_jpeg"})

    # 16-bit: v = 256 g (g = red channel); the reader divides by 257 and rounds.
    v = a[..., 0].astype(np.uint16) * 256
    gray16 = np.rint(v / 257.0).astype(np.uint8)
    out["16bit"] = (".png", save(Image.fromarray(v), "PNG"),
                    np.repeat(gray16[..., None], 3, 2), {"16bit"})

    # Alpha 0 or 255 only, so that compositing onto white has no rounding to argue about;
    # the colour under a transparent pixel (a's) must not show.
    # 8 px squares: a pattern JPEG (data prepare's copy) keeps within a few levels.
    alpha = np.where((np.arange(W)[None, :] // 8 + np.arange(H)[:, None] // 8) % 2, 0, 255)
    alpha = alpha.astype(np.uint8)
    rgba = np.dstack([a, alpha])
    white = np.where(alpha[..., None] == 0, 255, a).astype(np.uint8)
    out["rgba"] = (".png", save(Image.fromarray(rgba, "RGBA"), "PNG"), white, {"alpha"})
    la = np.dstack([a[..., 0], alpha])
    la_white = np.where(alpha == 0, 255, a[..., 0]).astype(np.uint8)
    out["la"] = (".png", save(Image.fromarray(la, "LA"), "PNG"),
                 np.repeat(la_white[..., None], 3, 2), {"alpha"})

    pal = rgb.quantize(colors=16)
    index = np.asarray(pal)
    lut = np.array(pal.getpalette()[: 16 * 3], np.uint8).reshape(-1, 3)
    assert (index == 0).any() and (index != 0).any()
    expected = np.where((index == 0)[..., None], 255, lut[index]).astype(np.uint8)
    out["palette_transparent"] = (".png", save(pal, "PNG", transparency=0), expected,
                                  {"palette"})
    return out


KINDS = kinds()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    paths = {}
    for name, (suffix, data, _, _) in KINDS.items():
        paths[name] = str(folder / f"{name}{suffix}")
        Path(paths[name]).write_bytes(data)
    return paths


def sample(mode: str, train: bool, path: str, seed: int) -> torch.Tensor:
    """What a worker (and for gpu the device, here the CPU) makes of one file."""
    read, transform, _ = transforms_for(mode, train, R)
    item = ImageDataset([(path, 0)], transform, read)[(0, seed)]
    if mode != "gpu":
        return item[0]
    return gpu.decode_batch(gpu.collate_encoded([item]), CPU).images[0]


def expected_train(pixels: np.ndarray, seed: int) -> torch.Tensor:
    torch.default_generator.manual_seed(seed)  # as ImageDataset seeds each sample
    return TrainTransform(R)(Image.fromarray(pixels))


def expected_eval(pixels: np.ndarray) -> torch.Tensor:
    return EvalTransform(R)(Image.fromarray(pixels))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int((a.int() - b.int()).abs().max())


# Tolerances (levels of 255), where a path resamples differently from torchvision on PIL:
# - cpu train: torch's uint8 antialiased bilinear kernel against PIL's (the same filter,
#   rounding differs by at most 1);
# - gpu: torch's float antialiased kernel rounded back to uint8 (the device has no uint8
#   kernel), at most 2 (tests/data/test_gpu_path.py measures the same).
# Everything else is exact: the decoders are all libjpeg-turbo and transposes are exact.
TRAIN_TOLERANCE = {"pil": 0, "cpu": 1, "gpu": 2}
EVAL_TOLERANCE = {"pil": 0, "cpu": 0, "gpu": 2}


@pytest.mark.parametrize("kind", KINDS)
def test_the_reader_gives_the_known_pixels(files, kind):
    _, _, known, _ = KINDS[kind]
    np.testing.assert_array_equal(np.asarray(load_rgb(files[kind])), known)
    np.testing.assert_array_equal(np.asarray(open_image(files[kind])[0]), known)  # predict


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_train_crops_are_the_known_pixels_in_every_mode(files, kind, mode):
    _, _, known, _ = KINDS[kind]
    for seed in SEEDS:
        got = sample(mode, True, files[kind], seed)
        assert max_diff(got, expected_train(known, seed)) <= TRAIN_TOLERANCE[mode], seed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_eval_crops_are_the_known_pixels_in_every_mode(files, kind, mode):
    _, _, known, _ = KINDS[kind]
    got = sample(mode, False, files[kind], 0)
    assert max_diff(got, expected_eval(known)) <= EVAL_TOLERANCE[mode]


@pytest.mark.parametrize("kind", KINDS)
def test_a_prediction_sees_exactly_what_rn50_eval_sees(files, kind):
    """`rn50 eval` in the default cpu mode against predict's two preprocessings (torch's
    EvalTransform for checkpoints, numpy's eval_crop for ONNX and the Space): equal pixels."""
    evaluated = sample("cpu", False, files[kind], 0)
    seen = open_image(files[kind])[0]
    assert torch.equal(EvalTransform(R)(seen), evaluated)
    np.testing.assert_array_equal(eval_crop(seen, R, 0.875), evaluated.permute(1, 2, 0).numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_data_check_names_each_kind(files, kind):
    report = check_file(files[kind])
    assert report.ok and set(report.problems) == KINDS[kind][3]


@pytest.mark.parametrize("max_side", [64, 20])
@pytest.mark.parametrize("kind", KINDS)
def test_data_prepare_writes_the_known_pixels(files, tmp_path, kind, max_side):
    """A copied file reads exactly as its source. A re-encoded one is the known answer
    (resized with Lanczos for max_side 20) saved as JPEG at the same quality, exactly; where
    prepare lets libjpeg decode a large JPEG at 1/2 scale (DCT scaling) instead of resizing
    the full decode, within a mean of 4 levels of that, while the wrongly turned image is
    tens of levels away."""
    suffix, _, known, _ = KINDS[kind]
    dest = str(tmp_path / "out.JPEG")
    outcome = prepare_file(files[kind], dest, max_side, 95)
    got = np.asarray(load_rgb(dest)).astype(int)
    if outcome == "copied":
        assert np.array_equal(got, np.asarray(load_rgb(files[kind])))
        assert np.array_equal(got, known)
        return
    assert outcome in ("converted", "resized")
    expected = Image.fromarray(known)
    if max_side < max(W, H):
        scale = max_side / max(W, H)
        expected = expected.resize(
            (max(1, round(expected.width * scale)), max(1, round(expected.height * scale))),
            Image.LANCZOS,
        )
    expected = np.asarray(Image.open(io.BytesIO(save(expected, "JPEG", quality=95)))).astype(int)
    assert got.shape == expected.shape
    if max_side < max(W, H) and suffix == ".JPEG" and kind != "png_as_jpeg":
        assert np.abs(got - expected).mean() < 4
        assert np.abs(got - expected[::-1, ::-1]).mean() > 20
    else:
        assert np.array_equal(got, expected)


def test_the_issue_reproduction_stands_upright(tmp_path):
    """A 40x20 JPEG tagged "rotate 90 clockwise" trains and evaluates as 20x40, red on top."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    path = tmp_path / "exif6.jpg"
    Image.fromarray(a).save(path, exif=exif(6))
    img = np.asarray(load_rgb(str(path)))
    assert img.shape == (40, 20, 3)
    assert img[:18, :, 0].min() > 240 and img[22:, :, 0].max() < 15  # red on top
    for mode in MODES:
        out = sample(mode, False, str(path), 0).permute(1, 2, 0).numpy().astype(int)
        top, bottom = out[: R // 2 - 2], out[R // 2 + 2 :]
        assert top[..., 0].min() > 200 and bottom[..., 0].max() < 40, mode


@pytest.mark.parametrize("turn", range(1, 9))
def test_orientation_helpers_equal_pils_exif_transpose(turn):
    a = base()
    img = Image.open(io.BytesIO(save(Image.fromarray(a), "PNG", exif=exif(turn))))
    known = np.array(ImageOps.exif_transpose(img))  # a writable copy, for torch.from_numpy
    np.testing.assert_array_equal(image.orient_array(a, turn), known)
    np.testing.assert_array_equal(np.asarray(image.orient(Image.fromarray(a), turn)), known)
    chw = torch.from_numpy(a).permute(2, 0, 1)
    assert torch.equal(gpu.orient_tensor(chw, turn).permute(1, 2, 0), torch.from_numpy(known))
    assert image.oriented_size(H, W, turn) == known.shape[:2]
    data = save(Image.fromarray(a), "JPEG", exif=exif(turn))
    assert image.file_orientation(data) == turn
    assert image.file_orientation(np.frombuffer(data, np.uint8)) == turn


def test_orientation_from_xmp_and_broken_exif():
    rgb = Image.fromarray(base())
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
           b'tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    data = save(rgb, "JPEG", xmp=xmp)
    assert image.file_orientation(data) == 8 == image.orientation(Image.open(io.BytesIO(data)))
    e = Image.Exif()
    e[0x0112] = 9  # no such orientation: as stored
    assert image.file_orientation(save(rgb, "JPEG", exif=e.tobytes())) == 1
    assert image.file_orientation(save(rgb, "JPEG")) == 1


def test_dct_scaled_decoding_crops_the_upright_image(tmp_path):
    """A large oriented photo at a small output: the cpu mode decodes at 1/2..1/8 scale and
    crops the box drawn on the upright image, the same box as the pil mode (within the
    rounding of a scaled decode: a few levels on average, not tens)."""
    big = np.asarray(Image.fromarray(base()).resize((400, 240), Image.BILINEAR))
    path = tmp_path / "big.JPEG"
    Image.fromarray(big).save(path, quality=95, exif=exif(6))
    read, transform, _ = transforms_for("cpu", True, 24)
    data = decode.read_bytes(str(path))
    h, w, _ = decode.probe(data)
    scaled = 0
    for seed in range(8):
        got = ImageDataset([(str(path), 0)], transform, read)[(0, seed)][0]
        torch.default_generator.manual_seed(seed)
        box = decode.sample_crop(*image.oriented_size(h, w, 6))
        scaled += decode.reduction(box[2], box[3], 24, 24) > 1
        ref = ImageDataset([(str(path), 0)], TrainTransform(24), load_rgb)[(0, seed)][0]
        assert (got.int() - ref.int()).abs().float().mean() < 5, seed
    assert scaled  # the test saw DCT-scaled decodes


def test_large_images_are_named_in_rn50_words(files, monkeypatch, capfd):
    """Above Pillow's decompression-bomb threshold (lowered here to 500 px; the files are
    960 px, under twice that): no raw DecompressionBombWarning, one rn50 line naming the file
    from every mode, and `data check` counts the file as huge."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    path = files["exif1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        for mode in MODES:
            assert sample(mode, True, path, 0) is not None
            err = capfd.readouterr().err
            assert f"rn50: warning: {path}: 40x24 px" in err, mode
            assert "DecompressionBomb" not in err
        assert "huge" in check_file(path).problems


def test_data_check_reports_rotated_and_huge_files_in_text_and_json(tmp_path, monkeypatch):
    for split in ("train", "val"):
        folder = tmp_path / "data" / split / "c0"
        folder.mkdir(parents=True)
        for name in ("exif1", "exif6", "exif8"):
            (folder / f"{name}.JPEG").write_bytes(KINDS[name][1])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    report = check_dataset(find_dataset(tmp_path / "data"), workers=1)
    rotated = [r.path for r in report.warnings["exif_rotated"]]
    assert rotated == ["train/c0/exif6.JPEG", "train/c0/exif8.JPEG",
                       "val/c0/exif6.JPEG", "val/c0/exif8.JPEG"]
    assert len(report.warnings["huge"]) == 6 and not report.has_errors
    text = format_report(report)
    assert "  exif_rotated: 4" in text and "  huge: 6" in text
    assert "train/c0/exif6.JPEG (JPEG RGB)" in text
    assert [r["path"] for r in report.to_json()["warnings"]["exif_rotated"]] == rotated


def test_the_reader_imports_only_pillow_and_numpy_and_the_space_can_import_it(tmp_path):
    """image.py is copied verbatim into a Space, where rn50 is not installed: inference.py
    then imports the copy beside it."""
    import ast

    import rn50.serve.space_template.inference as inference
    from rn50.serve import export

    source = Path(image.__file__)
    assert export.READER == source
    tree = ast.parse(source.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    stdlib = {"__future__", "io", "os", "re", "stat", "warnings", "pathlib", "typing"}
    assert imported <= stdlib | {"numpy", "PIL"}
    for name in ("inference.py", "image.py"):
        src = Path(inference.__file__) if name == "inference.py" else source
        (tmp_path / name).write_bytes(src.read_bytes())
    (tmp_path / "exif6.jpg").write_bytes(KINDS["exif6"][1])
    code = ("import sys; sys.modules['rn50'] = None; import inference; "
            "img, _ = inference.open_image('exif6.jpg'); "
            "print(inference.open_image.__module__, img.size)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert out.split() == ["image", "(24,", "40)"]
