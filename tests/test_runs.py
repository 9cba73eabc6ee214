"""`rn50 runs`: the table of runs under a folder, and their curves overlaid."""

import json
import shutil

import yaml
from PIL import Image

from rn50.cli import main
from rn50.plots import COMPARE_SIZE
from rn50.runlog import read_metrics


def make_runs(straight_run, root):
    """root/a: the straight run; root/group/b: its first epoch only, priced at 3.0 an hour."""
    a, b = root / "a", root / "group" / "b"
    for d in (a, b):
        d.mkdir(parents=True)
        for name in ("metrics.jsonl", "config.yaml", "run_info.json"):
            shutil.copy(straight_run / name, d / name)
    first = (straight_run / "metrics.jsonl").read_text().splitlines()[0]
    (b / "metrics.jsonl").write_text(first + "\n")
    config = yaml.safe_load((b / "config.yaml").read_text())
    config["train"]["price_per_gpu_hour"] = 3.0
    (b / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "not-a-run").mkdir()
    return a, b


def test_runs_table_has_a_row_per_run_with_its_numbers(straight_run, tmp_path, capsys):
    make_runs(straight_run, tmp_path)
    assert main(["runs", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "epochs", "best", "top-1", "top-5", "time", "img/s", "cost"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["a", "group/b"]

    records = read_metrics(straight_run / "metrics.jsonl")
    top = max(r["val_top1"] for r in records)
    best = next(r for r in records if r["val_top1"] == top)
    a = rows["a"].split()
    assert a[1] == "2/2"
    assert " ".join(a[2:5]) == f"{best['val_top1']:.2f}% (ep {best['epoch']})"
    assert a[5] == f"{best['val_top5']:.2f}%"
    assert a[-1] == "-"  # no price, no cost

    first = records[0]
    b = rows["group/b"].split()
    assert b[1] == "1/2"
    assert " ".join(b[2:5]) == f"{first['val_top1']:.2f}% (ep 1)"
    assert a[-2] == f"{96 / sum(r['train_time_s'] for r in records):.0f}"
    assert b[-1] == f"{first['epoch_time_s'] / 3600 * 3.0:.2f}"


def test_runs_plot_overlays_curves_in_one_png(straight_run, tmp_path, capsys):
    a, b = make_runs(straight_run, tmp_path)
    out = tmp_path / "cmp.png"
    assert main(["runs", "--plot", str(a), str(b), "--out", str(out)]) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == COMPARE_SIZE


def test_runs_errors_and_an_empty_folder(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["runs", str(tmp_path)]) == 0
    assert "No runs under" in capsys.readouterr().out
    assert main(["runs", "--plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "is not a run dir (it has no metrics.jsonl)" in capsys.readouterr().err


def test_run_info_device_count_scales_the_cost(straight_run, tmp_path, capsys):
    _, b = make_runs(straight_run, tmp_path)
    info = json.loads((b / "run_info.json").read_text())
    info["device"]["count"] = 4
    (b / "run_info.json").write_text(json.dumps(info))
    assert main(["runs", str(tmp_path)]) == 0
    row = [x for x in capsys.readouterr().out.splitlines() if x.startswith("group/b")][0]
    first = read_metrics(b / "metrics.jsonl")[0]
    assert row.split()[-1] == f"{first['epoch_time_s'] / 3600 * 3.0 * 4:.2f}"
