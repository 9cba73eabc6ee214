"""Every way to get the command line wrong ends in one line on stderr and exit code 2."""

import subprocess
import sys

import pytest

from rn50.cli import main


def run_main(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "-c", "{cfg}", "--set", "optim.max_lrr=1"], "optim.max_lrr"),
        (["train", "-c", "{cfg}", "--set", "optim.max_lr=abc"], "optim.max_lr must be a number"),
        (["train", "-c", "{cfg}", "--set", "optim.pct_start=0"], "optim.pct_start must be in"),
        (["train", "-c", "{tmp}/missing.yaml"], "config file not found"),
        (
            ["train", "-c", "{cfg}", "--set", "data.data_dir={tmp}/nowhere"],
            "data.data_dir: no such directory",
        ),
        (["train", "-c", "{cfg}", "--set", "model.num_classes=1000"], "set model.num_classes=3"),
        (["train", "-c", "{cfg}", "--set", "data.batch_size=100"], "data.batch_size (100)"),
        (["train", "-c", "{cfg}", "--set", "model.arch=resnet5000"], "model.arch 'resnet5000'"),
        (["eval", "--checkpoint", "{tmp}/missing.pth"], "no checkpoint at"),
        (["eval", "--checkpoint", "{cfg}"], "is not"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, tiny_data, argv, needle):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"data: {{data_dir: {tiny_data}, batch_size: 8, resolution: 32}}\n"
        f"model: {{num_classes: 3}}\ntrain: {{checkpoint_dir: {tmp_path}/run}}\n"
    )
    argv = [a.format(cfg=cfg, tmp=tmp_path) for a in argv]
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rn50: error: ") and needle in lines[0], lines[0]
    assert not (tmp_path / "run" / "checkpoint_epoch_001.pth").exists()


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rn50", "train", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip() == f"rn50: error: config file not found: '{tmp_path}/nope.yaml'; "
        "pass an existing YAML file to --config"
    )


def test_help_lists_config_keys(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "max_lr: 0.675" in out and "peak learning rate" in out


def test_config_command_prints_resolved_yaml(capsys):
    rc, out, _ = run_main(capsys, "config", "--set", "optim.max_lr=0.25")
    assert rc == 0 and "max_lr: 0.25" in out


def commands_with(option: str) -> list[str]:
    """The rn50 commands (data's subcommands as "data check", ...) whose parser has `option`."""
    import argparse

    from rn50.cli import build_parser

    found = []

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
            elif option in action.option_strings:
                found.append(" ".join(prefix))

    walk(build_parser(), [])
    return found


def test_flip_and_no_flip_together_are_refused(capsys, tmp_path):
    from rn50.cli import build_parser

    rest = {"eval": ["--checkpoint", str(tmp_path / "x.pth")],
            "predict": ["--checkpoint", str(tmp_path / "x.pth"), "a.png"]}
    commands = commands_with("--no-flip")
    assert sorted(commands) == sorted(rest)  # every command with the flags is checked here
    for command in commands:
        for given, flip in (["--flip"], True), (["--no-flip"], False), ([], None):
            assert build_parser().parse_args([command, *rest[command], *given]).flip is flip
        for both in (["--flip", "--no-flip"], ["--no-flip", "--flip"]):
            with pytest.raises(SystemExit) as stop:
                main([command, *both, *rest[command]])
            assert stop.value.code == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("rn50: error: argument --"), lines
            assert "--flip" in lines[0] and "--no-flip" in lines[0], lines[0]
            assert "not allowed with" in lines[0], lines[0]
