"""Every bad input is one line `rn50: error: ...`, exit code 2, and nothing written.

Each kind of input has its matrix over every command that reads it: each config key (from the
dataclasses, so a new key is covered) with wrong types, non-finite and huge values; each file
argument given a folder, a binary file and an empty file; each output path given a file where
a folder goes and a folder where a file goes. Also: YAML words, alias bombs, `rn50 runs` over
a broken run, a closed stdout, and worker counts capped to the machine.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from rn50 import resources
from rn50.cli import main
from rn50.config import (
    ANNEAL,
    ARCHS,
    BOUNDS,
    DECODE_MODES,
    PRECISIONS,
    PROGRESS,
    RULES,
    Config,
    load_config,
)
from rn50.errors import ConfigError, UserError, excerpt
from rn50.resources import cap_workers
from tests.serving import make_checkpoint

MAX_LINE = 600  # a message quotes bounded excerpts: no line of an error gets near this


def tree(root: Path) -> list[tuple[str, int]]:
    """Every path under root with its size (-1 for folders): what "nothing written" compares."""
    return sorted(
        (str(p.relative_to(root)), -1 if p.is_dir() else p.stat().st_size)
        for p in root.rglob("*")
    )


def one_error(capsys, argv, root: Path, needle: str = "") -> str:
    """Run rn50 in this process; assert exit code 2, one error line, nothing new under root."""
    before = tree(root)
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (argv, out, err)
    assert len(lines) == 1 and lines[0].startswith("rn50: error: "), (argv, err)
    assert len(lines[0]) < MAX_LINE, lines[0][:200]
    assert needle in lines[0], (needle, lines[0])
    assert tree(root) == before, f"{argv} wrote {set(tree(root)) - set(before)}"
    return lines[0]


@pytest.fixture
def files(tmp_path):
    """Things that are not what a command expects: a folder, a binary file, an empty file."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "folder").mkdir()
    (d / "binary").write_bytes(bytes(range(256)) * 4)
    (d / "empty").write_bytes(b"")
    return {name: d / name for name in ("folder", "binary", "empty")}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A valid resnet18 checkpoint (8 classes, 48 px), for the commands that need one."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth")


def run_yaml(tmp_path, data_dir, **extra) -> Path:
    """A config file for the tiny dataset whose run dir is tmp_path/run (never created)."""
    text = (f"data: {{data_dir: {data_dir}, batch_size: 8, resolution: 32, workers: 0}}\n"
            f"model: {{arch: resnet18, num_classes: 3}}\n"
            f"train: {{checkpoint_dir: {tmp_path}/run}}\n")
    path = tmp_path / "run.yaml"
    path.write_text(text + "".join(f"{k}\n" for k in extra.values()))
    return path


# --- config keys: every field of every section, from the dataclasses ---------------------

def config_keys():
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.type):
            yield f"{section.name}.{f.name}", f.type


HUGE_INT = "9" * 5000  # int() of it raises in Python >= 3.11 unless digits are bounded first
NOT_NUMBERS = ["[1]", "{a: 1}", "abc", "true", "''"]
NON_FINITE = ["nan", "inf", "-inf", "1e308", "-1e308", HUGE_INT, f"-{HUGE_INT}"]
WORD_KEYS = {"optim.anneal_strategy", "optim.optimizer", "lr_finder.rule", "train.precision",
             "train.device", "train.progress", "data.decode", "data.gpu_decoder"}


def bad_values(tp) -> list[str]:
    if tp is int:
        return NOT_NUMBERS + NON_FINITE + ["1.5", "2.0", "-1e-3"]
    if tp is float or tp == (float | str):
        return ["[1]", "{a: 1}", "true"] + NON_FINITE + (["abc"] if tp is float else [])
    if tp == (int | str):  # a count or auto
        return ["[1]", "{a: 1}", "abc", "true", "''", "1.5", "-1", "Auto"] + NON_FINITE
    if tp is bool:
        return ["[1]", "{a: 1}", "1", "nan", "1e308", "maybe", "''"]
    return ["[1]", "{a: 1}", "x" * 5000, '"a\\0b"', '"two\\nlines"']  # str


def test_every_number_key_has_a_bound():
    numbers = {k for k, tp in config_keys() if tp in (int, float, float | str, int | str)}
    assert numbers == set(BOUNDS)


def bad_yaml(path: Path, run: Path, section: str, name: str, value: str) -> Path:
    """A config file with one bad value; its run dir is `run` (never created)."""
    keys = {("train", "checkpoint_dir"): str(run), (section, name): value}
    sections: dict[str, list[str]] = {}
    for (sec, key), v in keys.items():
        sections.setdefault(sec, []).append(f"  {key}: {v}")
    path.write_text("".join(f"{sec}:\n" + "\n".join(lines) + "\n"
                            for sec, lines in sections.items()))
    return path


@pytest.mark.parametrize("key, tp", list(config_keys()), ids=lambda x: str(x)[:30])
def test_each_key_refuses_bad_values_with_one_line(capsys, tmp_path, key, tp):
    """Through --set and through a config file, to train (which would write a run dir)."""
    section, name = key.split(".")
    run = tmp_path / "run"
    values = bad_values(tp) + (["nan", "inf", "off!", "1e308"] if key in WORD_KEYS else [])
    base = tmp_path / "base.yaml"
    base.write_text(f"train:\n  checkpoint_dir: {run}\n")
    for value in values:
        line = one_error(capsys, ["train", "-c", base, "--set", f"{key}={value}"], tmp_path)
        assert key in line  # the message names the key the user wrote
        f = bad_yaml(tmp_path / "bad.yaml", run, section, name, value)
        assert key in one_error(capsys, ["train", "-c", f], tmp_path)
        f.unlink()
    assert not run.exists()


@pytest.mark.parametrize("key, inside, outside", [
    ("data.batch_size", "65536", "65537"),
    ("optim.max_lr", "10000", "10000.5"),
    ("train.seed", "4294967295", "4294967296"),
    ("optim.weight_decay", "1", "1.01"),
    ("train.log_every_seconds", "1e9", "1.1e9"),
])
def test_bounds_are_where_the_table_says(key, inside, outside):
    load_config(None, [f"{key}={inside}"])
    with pytest.raises(ConfigError, match=f"^{key} must be (at most|in \\[0, 1\\])"):
        load_config(None, [f"{key}={outside}"])


def test_non_finite_numbers_say_finite():
    for v in ("nan", "inf", "-inf", "1e400"):
        with pytest.raises(ConfigError, match="optim.max_lr must be a finite number"):
            load_config(None, [f"optim.max_lr={v}"])


# --- words: what YAML 1.1 would turn into booleans stays the word the key takes -----------

@pytest.mark.parametrize("key, words", [
    ("train.progress", PROGRESS), ("train.precision", PRECISIONS),
    ("data.decode", DECODE_MODES), ("optim.anneal_strategy", ANNEAL),
    ("lr_finder.rule", RULES), ("train.device", ("auto", "cpu", "cuda:1")),
    ("optim.max_lr", ("auto",)), ("model.arch", ARCHS),
    ("data.workers", ("auto",)), ("data.decode", ("auto",)),
    ("data.data_dir", ("off", "no", "2024", "1e3", "true")),
    ("data.skip_list", ("off", "null.txt")),
    ("train.checkpoint_dir", ("on", "0")), ("train.initial_model_path", ("yes",)),
])
def test_word_keys_take_their_words_as_written(tmp_path, key, words):
    section, name = key.split(".")
    for word in words:
        f = tmp_path / "words.yaml"
        f.write_text(f"{section}:\n  {name}: {word}\n")
        assert getattr(getattr(load_config(f), section), name) == word
        assert getattr(getattr(load_config(None, [f"{key}={word}"]), section), name) == word


def test_switches_take_yaml_booleans_in_any_case(tmp_path):
    f = tmp_path / "switches.yaml"
    for word, value in [("off", False), ("On", True), ("NO", False), ("yes", True),
                        ("False", False), ("true", True)]:
        f.write_text(f"data:\n  hflip: {word}\ntrain:\n  progress: off\n  tensorboard: {word}\n")
        cfg = load_config(f)
        assert (cfg.data.hflip, cfg.train.tensorboard, cfg.train.progress) == (value, value, "off")
        assert load_config(None, [f"optim.nesterov={word}"]).optim.nesterov is value


def test_the_resolved_config_reads_back_the_same(tmp_path):
    cfg = load_config(None, ["train.progress=off", "data.data_dir=2024", "optim.max_lr=1e-3"])
    f = tmp_path / "resolved.yaml"
    f.write_text(cfg.to_yaml())
    assert load_config(f) == cfg


# --- YAML alias bombs and bounded excerpts ---------------------------------------------

def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """data.data_dir expands to width**levels (387 million) strings through aliases."""
    lines = ["bombs:", "  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\ndata:\n  data_dir: *a{levels}\n"


def test_an_alias_bomb_is_refused_in_bounded_memory(capsys, tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(alias_bomb())
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="at line 3 uses the YAML alias") as e:
            load_config(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, peak
    assert len(str(e.value)) < MAX_LINE
    for argv in (["config", "-c", f], ["train", "-c", f], ["lr-find", "-c", f],
                 ["data", "show", "-c", f], ["bench", "-c", f]):
        one_error(capsys, argv, tmp_path, "alias")
    one_error(capsys, ["config", "--set", "data.data_dir=[&x [1, 2], *x]"], tmp_path, "alias")


def test_excerpt_of_a_huge_shared_structure_is_bounded_and_fast():
    value = ["lol"]
    for _ in range(9):
        value = [value] * 9  # 9**9 leaves if expanded, 81 references held
    start = time.perf_counter()
    text = excerpt(value)
    assert time.perf_counter() - start < 1.0  # linear in the excerpt, not in 387M items
    assert len(text) <= 60 and text.startswith("[[[")
    assert excerpt("x" * 10**7) == "'" + "x" * 27 + "..." + "x" * 28 + "'"
    assert excerpt("two\nlines") == "'two\\nlines'"


# --- command-line syntax: argparse's errors in the same one-line form ------------------------

@pytest.mark.parametrize("argv, needle", [
    (["train"], "the following arguments are required: --config/-c"),
    (["predict", "--top", "9" * 5000, "--checkpoint", "x", "y"], "invalid int value"),
    (["fly"], "invalid choice: 'fly'"),
    (["data", "check"], "required: PATH"),
    (["predict", "--top", "-" + "9" * 4000, "--checkpoint", "x", "y"], "--top must be"),
    (["app", "--port", "9" * 4000, "--checkpoint", "x"], "--port must be"),
    (["data", "check", ".", "--max-paths", "-" + "9" * 4000], "--max-paths must be"),
])
def test_argument_errors_are_one_bounded_line(capsys, argv, needle):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rn50: error: ") and needle in lines[0]
    assert len(lines[0]) < MAX_LINE


# --- config files: every command that reads --config ---------------------------------------

def config_commands(ckpt) -> list[list]:
    return [["train"], ["lr-find"], ["config"], ["data", "show"], ["bench"],
            ["eval", "--checkpoint", ckpt]]


@pytest.mark.parametrize("bad", ["folder", "binary", "empty", "list", "scalar", "huge"])
def test_every_config_reader_refuses_a_bad_file(capsys, tmp_path, files, ckpt, bad):
    extra = {"list": "- 1\n- 2\n", "scalar": "hello\n", "huge": "# pad\n" * 200_000}
    if bad in extra:
        files[bad] = tmp_path / "bad" / f"{bad}.yaml"
        files[bad].write_text(extra[bad])
    for cmd in config_commands(ckpt):
        one_error(capsys, [*cmd, "--config", files[bad]], tmp_path)


# --- file arguments: a folder, a binary file and an empty file where a file goes -----------

@pytest.mark.parametrize("bad", ["folder", "binary", "empty"])
def test_every_file_argument_refuses_non_files(capsys, tmp_path, files, ckpt, tiny_data, bad):
    cfg = run_yaml(tmp_path, tiny_data)
    path = files[bad]
    data = f"data.data_dir={tiny_data}"
    argvs = [
        (["eval", "--checkpoint", path], "checkpoint"),
        (["predict", "--checkpoint", path, path], "checkpoint"),
        (["predict", "--onnx", path, path], "ONNX"),
        (["export", "--checkpoint", path, "--format", "safetensors", "--out", tmp_path / "o"],
         "checkpoint"),
        (["app", "--checkpoint", path, "--port", "1"], "checkpoint"),
        (["predict", "--checkpoint", ckpt, path], str(path)),  # the image
        (["bench", "--from", path], "--from"),
        (["train", "-c", cfg, "--set", f"data.skip_list={path}"], "data.skip_list"),
        (["lr-find", "-c", cfg, "--set", f"data.skip_list={path}"], "data.skip_list"),
        (["data", "show", "-c", cfg, "--set", f"data.skip_list={path}"], "data.skip_list"),
        (["eval", "--checkpoint", ckpt, "--set", data, "--set", f"data.skip_list={path}"],
         "data.skip_list"),
        (["train", "-c", cfg, "--set", f"train.initial_model_path={path}"], str(path)),
        (["lr-find", "-c", cfg, "--set", f"train.initial_model_path={path}"], str(path)),
    ]
    for argv, needle in argvs:
        one_error(capsys, argv, tmp_path, needle)
    assert not (tmp_path / "run").exists()


def test_a_file_where_a_folder_goes_is_refused(capsys, tmp_path, files, tiny_data):
    cfg = run_yaml(tmp_path, tiny_data)
    for argv in (["train", "-c", cfg, "--set", f"data.data_dir={files['binary']}"],
                 ["data", "check", files["binary"]],
                 ["data", "prepare", files["binary"], tmp_path / "copy"],
                 ["runs", files["binary"]],
                 ["runs", "--plot", files["binary"], "--out", tmp_path / "c.png"]):
        one_error(capsys, argv, tmp_path)


# --- output paths: checked before any work, in every command that writes a named path -----

def test_every_output_path_is_checked_first(capsys, tmp_path, files, ckpt, tiny_data):
    cfg = run_yaml(tmp_path, tiny_data)
    a_file, a_folder = files["binary"], files["folder"]
    under_a_file = a_file / "sub"
    run = tmp_path / "run0"
    (run / "metrics.jsonl").parent.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(record(1, 50.0)) + "\n")
    cases = [
        (["train", "-c", cfg, "--set", f"train.checkpoint_dir={a_file}"], "is a file"),
        (["train", "-c", cfg, "--set", f"train.checkpoint_dir={under_a_file}"], "is a file"),
        (["lr-find", "-c", cfg, "--set", f"train.checkpoint_dir={a_file}"], "is a file"),
        (["train", "-c", cfg, "--set", f"train.initial_model_path={under_a_file}"], "is a file"),
        (["data", "check", tiny_data, "--json", a_folder], "--json"),
        (["data", "check", tiny_data, "--skip-list", a_folder], "--skip-list"),
        (["data", "check", tiny_data, "--json", under_a_file], "--json"),
        (["data", "check", tiny_data, "--fix-to", a_file], "--fix-to"),
        (["data", "check", tiny_data, "--json", "/dev/null"], "not a regular file"),
        (["data", "prepare", tiny_data, a_file], "DST"),
        (["data", "prepare", tiny_data, under_a_file], "DST"),
        (["data", "demo", a_file], "DIR"),
        (["data", "show", "-c", cfg, "--out", a_folder], "--out"),
        (["data", "show", "-c", cfg, "--set", f"train.checkpoint_dir={a_file}"], "samples.png"),
        (["export", "--checkpoint", ckpt, "--format", "safetensors", "--out", a_folder], "--out"),
        (["export", "--checkpoint", ckpt, "--space", a_file], "--space"),
        (["runs", "--plot", run, "--out", a_folder], "--out"),
    ]
    for argv, needle in cases:
        start = time.perf_counter()
        one_error(capsys, argv, tmp_path, needle)
        assert time.perf_counter() - start < 10, argv  # refused before the work, not after


def test_no_output_file_replaces_a_users_file_or_lands_in_the_dataset(
    capsys, tmp_path, tiny_data
):
    """--json, --skip-list, data show --out and runs --out replace only what such a command
    wrote before; data check writes nothing inside the dataset it checks."""
    cfg = run_yaml(tmp_path, tiny_data)
    mine = tmp_path / "mine.yaml"
    mine.write_text("data: {batch_size: 8}\n")
    image = next((tiny_data / "train").rglob("*.jpg"))
    run = tmp_path / "run0"
    (run / "metrics.jsonl").parent.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(record(1, 50.0)) + "\n")
    cases = [
        (["data", "check", tiny_data, "--json", mine], "is not a JSON report rn50 wrote"),
        (["data", "check", tiny_data, "--skip-list", mine], "is not an rn50 skip list"),
        (["data", "check", tiny_data, "--json", image], "is inside the dataset"),
        (["data", "check", tiny_data, "--skip-list", tiny_data / "skip.txt"], "inside the dataset"),
        (["data", "show", "-c", cfg, "--out", mine], "is not a PNG image rn50 wrote"),
        (["runs", "--plot", run, "--out", mine], "is not a PNG image rn50 wrote"),
    ]
    before = image.read_bytes()
    for argv, needle in cases:
        one_error(capsys, argv, tmp_path, needle)
    assert mine.read_text() == "data: {batch_size: 8}\n" and image.read_bytes() == before
    # an earlier output of the same command is replaced
    report, skip = tmp_path / "report.json", tmp_path / "skip.txt"
    for _ in range(2):
        rc = main(["data", "check", str(tiny_data), "--json", str(report),
                   "--skip-list", str(skip)])
        assert rc == 0, capsys.readouterr().err
    assert json.loads(report.read_text())["files"] and skip.read_text().startswith("# rn50")


# --- rn50 runs: a broken run is a warning; the others are listed ---------------------------

def record(epoch: int, top1: float, **drop) -> dict:
    r = {"epoch": epoch, "val_top1": top1, "val_top5": top1 + 20, "val_loss": 1.0,
         "train_loss": 1.5, "train_time_s": 10.0, "epoch_time_s": 12.0, "train_images": 1000}
    for key in drop:
        r.pop(key)
    return r


@pytest.mark.parametrize("broken", ["no_val_top1", "string_top1", "a_list", "binary"])
def test_runs_lists_the_good_runs_and_warns_of_a_broken_one(capsys, tmp_path, broken):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "metrics.jsonl").write_text(
        "".join(json.dumps(record(e, t)) + "\n" for e, t in ((1, 40.0), (2, 55.5), (3, 50.0))))
    lines = {"no_val_top1": json.dumps(record(2, 0.0, val_top1=None)),
             "string_top1": json.dumps({**record(2, 0.0), "val_top1": "high"}),
             "a_list": "[1, 2]", "binary": ""}
    if broken == "binary":
        (bad / "metrics.jsonl").write_bytes(b"\xff\xfe" + bytes(range(256)))
    else:
        (bad / "metrics.jsonl").write_text(json.dumps(record(1, 30.0)) + "\n" + lines[broken])
    (bad / "config.yaml").write_text(alias_bomb())  # read as a config is: refused, not expanded
    assert main(["runs", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["good"]
    assert rows[0].split()[2:5] == ["55.50%", "(ep", "2)"]  # the best of the good run
    assert err.count("\n") == 1 and err.startswith("rn50: warning: left out ") and str(bad) in err
    assert main(["runs", "--plot", str(good), str(bad), "--out", str(tmp_path / "c.png")]) == 2
    assert "rn50: error: " in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


# --- a closed stdout ends the command quietly ----------------------------------------------

def test_a_closed_pipe_ends_quietly_in_process(capsys, monkeypatch):
    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["config"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [["config"], ["train", "--help"]])
def test_a_closed_pipe_ends_quietly_in_a_real_process(argv):
    proc = subprocess.Popen([sys.executable, "-m", "rn50", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte: every write fails
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc in (0, 141) if argv[-1] == "--help" else rc == 141


def test_config_into_head_prints_its_first_lines():
    proc = subprocess.run(f"'{sys.executable}' -m rn50 config | head -n 2", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 2


# --- worker counts: capped to the machine and the work, with a line ----------------------

def test_cap_workers_known_answers(monkeypatch):
    monkeypatch.setattr(resources, "available_cpus", lambda: 16)
    said = []
    assert cap_workers(100_000, "--workers", say=said.append) == 16
    assert said == ["--workers 100000 lowered to 16: this process may use 16 CPUs"]
    assert cap_workers(100, "--workers", work=5, say=said.append) == 5
    assert said[-1] == "--workers 100 lowered to 5: there are only 5 to do"
    assert cap_workers(8, "data.workers", share=4, say=said.append) == 4
    assert said[-1].endswith("may use 16 CPUs, shared by 4 processes")
    assert cap_workers(3, "x", say=said.append) == 3 and len(said) == 3  # no line: not lowered
    assert cap_workers(None, "x", work=40) == 16 and cap_workers(None, "x", work=3) == 3
    assert cap_workers(0, "data.workers") == 0  # in-process loading stays in-process
    assert cap_workers(5, "x", share=64) == 1
    with pytest.raises(UserError, match="--workers must be at least 1, got 0"):
        cap_workers(0, "--workers", least=1)


def test_available_cpus_is_the_affinity_mask():
    assert resources.available_cpus() == len(os.sched_getaffinity(0))


def test_every_worker_count_is_capped(capsys, monkeypatch, tmp_path, tiny_data):
    monkeypatch.setattr(resources, "available_cpus", lambda: 2)
    seen = {}

    class Stop(UserError):
        pass

    def capture(name, value):
        seen[name] = value
        raise Stop("stopped here")

    import rn50.bench.run
    import rn50.data.check.scan
    import rn50.data.prepare
    import rn50.train.loop

    # train: the count its loaders get (rn50.data.auto.choose_data caps it)
    monkeypatch.setattr(rn50.train.loop, "train_loader",
                        lambda data, *args: capture("train", data.workers))
    monkeypatch.setattr(rn50.data.check.scan, "check_dataset",
                        lambda index, workers, progress: capture("check", workers))
    monkeypatch.setattr(rn50.data.prepare, "prepare_dataset",
                        lambda *a, **k: capture("prepare", a[4]))
    monkeypatch.setattr(rn50.bench.run, "run_bench",
                        lambda plan, log: capture("bench", plan.workers))
    cfg = run_yaml(tmp_path, tiny_data)
    runs = [
        ("train", ["train", "-c", cfg, "--set", "data.workers=64"], 2, "data.workers 64"),
        ("check", ["data", "check", tiny_data, "--workers", "100000"], 2, "--workers 100000"),
        ("prepare", ["data", "prepare", tiny_data, tmp_path / "copy", "--workers", "999"], 2,
         "--workers 999"),
        ("bench", ["bench", "--only", "data", "--workers", "1,500", "--device", "cpu"], (1, 2),
         "--workers 500"),
    ]
    for name, argv, expected, said in runs:
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert seen[name] == expected, name
        assert f"rn50: note: {said} lowered to 2: this process may use 2 CPUs" in err, err
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two processes share the CPUs
    assert main(["train", "-c", str(cfg), "--set", "data.workers=64"]) == 2
    assert seen["train"] == 1 and "shared by 2 processes" in capsys.readouterr().err
    # More workers than files do nothing: 60 files of tiny_data, 100 CPUs.
    monkeypatch.setattr(resources, "available_cpus", lambda: 100)
    assert main(["data", "check", str(tiny_data), "--workers", "80"]) == 2
    assert seen["check"] == 60 and "there are only 60 to do" in capsys.readouterr().err


def test_what_a_new_user_tried_is_refused_in_one_line(capsys, tmp_path, tiny_data):
    """A network rn50 does not train, a key written twice, a demo too large for the machine:
    one line each, exit 2, nothing written."""
    cfg = run_yaml(tmp_path, tiny_data)
    twice = tmp_path / "twice.yaml"
    twice.write_text("data:\n  batch_size: 8\n  batch_size: 16\n")
    cases = [
        (["train", "-c", cfg, "--set", "model.arch=vit_b_16"],
         "model.arch 'vit_b_16' is not a torchvision ResNet"),
        (["config", "--set", "model.arch=resnet1000"], "model.arch 'resnet1000'"),
        (["config", "-c", twice], "at line 3 sets 'batch_size' twice"),
        (["data", "demo", tmp_path / "big", "--size", "100000"], "--size must be 8 to 1024 px"),
    ]
    for argv, needle in cases:
        one_error(capsys, argv, tmp_path, needle)


def test_eval_says_what_a_file_is_when_it_is_no_checkpoint(capsys, tmp_path, ckpt):
    """A device, a run's weights-only initial_model.pth and a plain state_dict each get a line
    that says what the file is and what to do instead."""
    import torch

    from rn50.checkpoint import load_checkpoint, save_checkpoint

    weights = load_checkpoint(ckpt)["model"]
    initial, plain = tmp_path / "initial_model.pth", tmp_path / "plain.pth"
    save_checkpoint({"model": weights}, initial)
    torch.save(weights, plain)
    cases = [
        (["eval", "--checkpoint", "/dev/null"], "is not a regular file (a device, FIFO or socket)"),
        (["eval", "--checkpoint", initial], "holds weights only, no config"),
        (["eval", "--checkpoint", plain], "evaluate it with rn50 eval --weights"),
    ]
    for argv, needle in cases:
        one_error(capsys, argv, tmp_path, needle)
