"""The progress reporter: plain lines off a terminal, a bar on one, known numbers, rank 0 only."""

import io
import re
import time

import torch

from rn50 import distributed
from rn50.metrics import Meter
from rn50.progress import Reporter, format_eta


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def one_hot_logits(targets: torch.Tensor, correct: int) -> torch.Tensor:
    """Logits whose top-1 is right for the first `correct` rows and wrong for the rest."""
    logits = torch.zeros(len(targets), 3)
    for i, y in enumerate(targets.tolist()):
        logits[i, y if i < correct else (y + 1) % 3] = 1.0
    return logits


def run_loop(report: Reporter, steps: int = 6, batch: int = 4, body_s: float = 0.0, load_s=0.0):
    """A fake epoch: step k has loss k and k % 2 * batch correct images (odd steps all right).

    Returns the snapshots `step` gave back, by step.
    """
    meter = Meter()

    def loader():
        for _ in range(steps):
            time.sleep(load_s)
            yield torch.zeros(batch, dtype=torch.long)

    snaps = {}
    for k, targets in enumerate(report.wrap(loader(), meter), 1):
        time.sleep(body_s)
        meter.update(torch.tensor(float(k)), one_hot_logits(targets, k % 2 * batch), targets)
        snap = report.step(batch, lr=0.25)
        if snap is not None:
            snaps[k] = snap
    return snaps


def test_plain_lines_off_a_terminal_with_known_numbers():
    lines, stream = [], io.StringIO()  # a StringIO is not a terminal
    report = Reporter("epoch 1", 6, every_steps=2, every_seconds=0, log=lines.append, stream=stream)
    snaps = run_loop(report)
    assert stream.getvalue() == ""  # no bar
    assert sorted(snaps) == [2, 4, 6]
    assert len(lines) == 3 and not any("\r" in x for x in lines)
    assert lines[0].startswith("  epoch 1 step 2/6  loss 1.5000  top1 50.00%  lr 0.25  ")
    assert re.search(r"  \d+ img/s  data \d+%  eta 0:00:\d\d$", lines[0]), lines[0]
    assert lines[2].startswith("  epoch 1 step 6/6  loss 3.5000  top1 50.00%")
    # Running means over the loop; interval means since the previous line.
    s4 = snaps[4]
    assert (s4.loss, s4.top1) == (2.5, 50.0)  # (1+2+3+4)/4, 2 of 4 steps right
    assert (s4.interval_loss, s4.interval_top1) == (3.5, 50.0)  # steps 3 and 4
    assert snaps[6].eta_s == 0


def test_lines_by_time_alone_and_none_when_both_are_off():
    lines = []
    report = Reporter(
        "epoch 1", 4, every_steps=0, every_seconds=0.01, log=lines.append, stream=io.StringIO()
    )
    run_loop(report, steps=4, body_s=0.02)
    assert [x.split("  loss")[0] for x in lines] == [f"  epoch 1 step {k}/4" for k in (1, 2, 3, 4)]
    quiet = []
    run_loop(
        Reporter(
            "epoch 1", 4, every_steps=0, every_seconds=0, log=quiet.append, stream=io.StringIO()
        ),
        steps=4,
    )
    assert quiet == []


def test_data_wait_share_is_the_time_spent_in_the_loader():
    def reporter():
        return Reporter("e", 4, every_steps=4, every_seconds=0, log=print, stream=io.StringIO())

    starved = reporter()
    slow_loader = run_loop(starved, steps=4, load_s=0.05)
    slow_model = run_loop(reporter(), steps=4, body_s=0.05)
    assert slow_loader[4].data_wait > 0.8
    assert slow_model[4].data_wait < 0.2
    assert 40 < slow_model[4].images_per_s < 80  # 4 images a step, 0.05 s a step at best
    time.sleep(0.3)  # e.g. validation, after the loop: not part of the loop's time
    assert starved.data_wait_share > 0.8


def test_a_terminal_gets_the_bar_and_the_log_file_the_lines():
    tty, printed, recorded = FakeTTY(), [], []
    report = Reporter(
        "epoch 3",
        6,
        every_steps=2,
        every_seconds=0,
        log=printed.append,
        record=recorded.append,
        stream=tty,
    )
    run_loop(report)
    out = tty.getvalue()
    assert "\r" in out and "epoch 3" in out and "6/6" in out and "loss 3.5000" in out
    assert printed == []  # the bar replaces the printed lines ...
    assert [x.split("  loss")[0] for x in recorded] == [  # ... which still reach the log file
        "  epoch 3 step 2/6",
        "  epoch 3 step 4/6",
        "  epoch 3 step 6/6",
    ]


def test_a_resumed_loop_counts_from_its_start():
    lines = []
    report = Reporter(
        "epoch 2",
        6,
        start=4,
        every_steps=2,
        every_seconds=0,
        log=lines.append,
        stream=io.StringIO(),
    )
    run_loop(report, steps=2)
    assert [x.split("  loss")[0] for x in lines] == ["  epoch 2 step 6/6"]


def test_only_rank_0_reports(monkeypatch):
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    tty, lines = FakeTTY(), []
    report = Reporter("epoch 1", 6, every_steps=1, log=lines.append, stream=tty)
    assert run_loop(report) == {}
    assert lines == [] and tty.getvalue() == ""


def test_off_prints_nothing_but_still_gives_report_points():
    tty, lines, recorded = FakeTTY(), [], []
    report = Reporter(
        "epoch 1",
        6,
        mode="off",
        every_steps=3,
        every_seconds=0,
        log=lines.append,
        record=recorded.append,
        stream=tty,
    )
    assert sorted(run_loop(report)) == [3, 6]  # for TensorBoard
    assert lines == recorded == [] and tty.getvalue() == ""


def test_format_eta():
    assert format_eta(0) == "0:00:00"
    assert format_eta(3725.2) == "1:02:05"
    assert format_eta(-3) == "0:00:00"


def test_a_real_terminal_on_stderr_gets_the_bar_and_stdout_stays_clean(straight_run):
    """rn50 eval with stderr on a pseudo-terminal and stdout on a pipe (progress: auto)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios
    import threading

    main_fd, child_fd = pty.openpty()
    # A new pseudo-terminal is 0 columns wide; a real one has a size (tqdm fits the bar to it).
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    cmd = [
        sys.executable,
        "-m",
        "rn50",
        "eval",
        "--checkpoint",
        str(straight_run / "checkpoint_epoch_002.pth"),
        "--set",
        "data.workers=0",
        "--set",
        "train.log_every=1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=child_fd, text=True)
    os.close(child_fd)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(main_fd, 4096)
            except OSError:  # EIO: the child side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(main_fd)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, terminal
    assert "\r" in terminal and "val" in terminal and "1/1" in terminal and "top1" in terminal
    assert "\r" not in out and "val step" not in out  # the bar replaced the lines
    assert "Val Loss: " in out
