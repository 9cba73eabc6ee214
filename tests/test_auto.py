"""data.workers: auto and data.decode: auto (rn50.data.auto): the choices for given CPU counts,
local processes and GPUs, their log lines, the config values, and one resolution for every
command that builds a loader."""

import json

import pytest
import torch
import yaml

from rn50 import resources
from rn50.checkpoint import FORMAT
from rn50.cli import main
from rn50.config import DataConfig, load_config
from rn50.data import auto
from rn50.errors import ConfigError, UserError
from tests.conftest import tiny_config

CUDA = torch.device("cuda")  # a device object only: the probes below say what it is


@pytest.fixture
def machine(monkeypatch):
    """Set the probes: the CPUs this process may use, torchrun's local processes, the GPU."""

    def set_machine(cpus: int, procs: int = 1, gpu: str | None = None) -> None:
        monkeypatch.setattr(resources, "available_cpus", lambda: cpus)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(procs))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)

    return set_machine


# (CPUs, local processes, GPU name, resolution, compiled) -> (workers, decode). Hand-computed
# from the constants: a cpu worker 7,105.3 / 16 = 444.1 img/s at 224 px and 11,044.7 / 16 =
# 690.3 at 192 px and below; the GPU decoder 2,000; the H200's eager step 4,677.2 at 224 px,
# 8,054.8 at 160 px, x 6,830.9 / 4,686.1 = 1.458 compiled.
KNOWN = [
    (2, 1, None, 224, False, 1, "cpu"),  # the demo's machine: no CUDA
    (1, 1, None, 224, False, 1, "cpu"),
    (16, 1, "NVIDIA H200", 224, False, 15, "cpu"),  # 6,661 >= 4,677
    (16, 1, "NVIDIA H200", 224, True, 15, "cpu"),  # 6,661 < 6,818 but > 2,000
    (8, 1, "NVIDIA H200", 224, False, 7, "cpu"),  # 3,109 < 4,677 but > 2,000
    (4, 1, "NVIDIA H200", 224, False, 3, "gpu"),  # 1,332 < 4,677 and < 2,000
    (4, 1, "NVIDIA H200", 160, False, 3, "cpu"),  # 2,071 < 8,055 but > 2,000
    (2, 1, "NVIDIA H200", 256, False, 1, "gpu"),  # 444 x (224/256)^2 = 340 < 3,581
    (4, 1, "Tesla T4", 224, False, 3, "cpu"),  # 1,332 >= 425
    (64, 8, "NVIDIA A100-SXM4-80GB", 224, False, 7, "cpu"),  # 8 CPUs each; 3,109 >= 2,470
    (16, 8, "NVIDIA H100 80GB HBM3", 224, False, 1, "gpu"),  # 2 CPUs each; 444 < 4,677
    (3, 1, "NVIDIA GeForce RTX 4090", 224, False, 2, "gpu"),  # unknown: the H200's; 888
    (3, 4, "Tesla V100-SXM2-16GB", 224, False, 1, "gpu"),  # 0 CPUs each -> 1; 444 < 1,200
]


@pytest.mark.parametrize("cpus, procs, gpu, res, compiled, workers, decode", KNOWN)
def test_auto_choices_known_answers(machine, cpus, procs, gpu, res, compiled, workers, decode):
    machine(cpus, procs, gpu)
    device = CUDA if gpu else torch.device("cpu")
    choice = auto.choose_data(DataConfig(resolution=res), device, compiled)
    assert (choice.data.workers, choice.data.decode) == (workers, decode)
    assert auto.resolve_data(DataConfig(resolution=res), device, compiled) == choice.data


def test_the_log_lines_say_what_and_why(machine):
    machine(8, 1, "NVIDIA H200")
    said = []
    auto.choose_data(DataConfig(), CUDA, say=said.append)
    assert said == [
        "data.workers auto -> 7 (8 CPUs for 1 process, one kept for the training loop)",
        "data.decode auto -> cpu: 7 workers decode about 3,100 img/s at 224 px, below the model "
        "step's ~4,700 img/s on this GPU (NVIDIA H200), but more than the GPU decoder's ~2,000",
    ]
    machine(4, 1, "NVIDIA H200")
    choice = auto.choose_data(DataConfig(), CUDA, compiled=True)
    assert choice.lines[1] == (
        "data.decode auto -> gpu: 3 workers decode about 1,300 img/s at 224 px, below the "
        "compiled model step's ~6,800 img/s on this GPU (NVIDIA H200); the GPU decoder gives "
        "about 2,000"
    )
    machine(32, 4, "Mystery GPU")
    choice = auto.choose_data(DataConfig(), CUDA)
    assert choice.lines == (
        "data.workers auto -> 7 (32 CPUs for 4 processes: 8 each, one kept for the training "
        "loop)",
        "data.decode auto -> cpu: 7 workers decode about 3,100 img/s at 224 px, below the model "
        "step's ~4,700 img/s on this GPU (Mystery GPU, not measured: the H200 rate), but more "
        "than the GPU decoder's ~2,000",
    )
    machine(2, 1, None)
    assert auto.choose_data(DataConfig(workers=0), torch.device("cpu")).lines == (
        "data.decode auto -> cpu: the model runs on the CPU",
    )
    machine(1, 1, None)
    assert auto.auto_workers()[1] == (
        "data.workers auto -> 1 (1 CPU for 1 process, sharing it with the training loop)"
    )


def test_values_that_are_not_auto_stay_and_say_nothing(machine):
    machine(16, 1, "NVIDIA H200")  # (12 workers fit: none is capped)
    said = []
    given = DataConfig(workers=12, decode="pil")
    choice = auto.choose_data(given, CUDA, say=said.append)
    assert choice.data == given and said == [] and choice.record() == {}
    # Only decode auto: chosen with the given 12 workers (5,329 img/s >= 4,677).
    choice = auto.choose_data(DataConfig(workers=12), CUDA)
    assert choice.data.decode == "cpu" and choice.record() == {
        "decode": "cpu", "why": list(choice.lines)}
    assert choice.lines[0].startswith("data.decode auto -> cpu: 12 workers decode about 5,300")


def test_the_cpu_device_decodes_on_the_cpu_even_beside_a_gpu(machine):
    machine(2, 1, "NVIDIA H200")
    assert auto.resolve_data(DataConfig(), torch.device("cpu")).decode == "cpu"


@pytest.mark.parametrize("x, text", [(1332, "1,300"), (4677.2, "4,700"), (444.1, "440"),
                                     (95, "95"), (20_000, "20,000"), (0, "0")])
def test_about_rounds_to_two_significant_figures(x, text):
    assert auto.about(x) == text


def test_local_processes_reads_torchrun(monkeypatch):
    for value, expected in [("8", 8), ("", 1), ("0", 1), ("x", 1)]:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
        assert resources.local_processes() == expected
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert resources.local_processes() == 1


# --- the config ----------------------------------------------------------------------------

def test_auto_is_the_default_and_counts_stay_counts():
    cfg = load_config()
    assert (cfg.data.workers, cfg.data.decode) == ("auto", "auto")
    assert load_config(None, ["data.workers=6"]).data.workers == 6
    assert load_config(None, ["data.workers=auto", "data.decode=gpu"]).data.decode == "gpu"
    for value, rule in [("many", "must be auto or a whole number of 0 or more, got 'many'"),
                        ("2.5", "must be auto or a whole number of 0 or more, got '2.5'"),
                        ("-1", "must be 0 or more, got -1")]:
        with pytest.raises(ConfigError, match=f"^data.workers {rule}"):
            load_config(None, [f"data.workers={value}"])
    with pytest.raises(ConfigError, match="^data.decode must be one of auto, cpu, gpu, pil"):
        load_config(None, ["data.decode=fast"])


def test_rn50_config_shows_auto(capsys):
    assert main(["config", "--set", "train.epochs=3"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert (data["workers"], data["decode"]) == ("auto", "auto")


# --- every command resolves auto through rn50.data.auto ------------------------------------

class Stop(UserError):
    pass


def test_every_command_resolves_auto_the_same_way(machine, monkeypatch, tmp_path, tiny_data,
                                                  capsys):
    """train, lr-find, eval, bench and data show all reach auto_decode with the workers
    auto_workers chose and the config's resolution, on the CPU here."""
    machine(6, 1, None)
    seen = {}

    def spy(workers, resolution, device, compiled=False):
        seen.setdefault("calls", []).append((workers, resolution, device.type, compiled))
        raise Stop("stopped after the choice")

    monkeypatch.setattr(auto, "auto_decode", spy)
    run = tmp_path / "run"
    cfg = tiny_config(tiny_data, run, data={"workers": "auto"}, model={"arch": "resnet18"})
    conf = tmp_path / "run.yaml"
    conf.write_text(cfg.to_yaml())
    checkpoint = tmp_path / "model.pth"
    torch.save({"format": FORMAT, "model": {}, "config": cfg.to_dict()}, checkpoint)
    commands = {
        "train": ["train", "-c", conf],
        "lr-find": ["lr-find", "-c", conf],
        "eval": ["eval", "--checkpoint", checkpoint],
        "bench": ["bench", "-c", conf, "--device", "cpu", "--only", "e2e"],
        "data show": ["data", "show", "-c", conf, "--out", tmp_path / "s.png"],
    }
    for name, argv in commands.items():
        seen.clear()
        assert main([str(a) for a in argv]) == 2, name
        assert "stopped after the choice" in capsys.readouterr().err, name
        assert seen["calls"] == [(5, 32, "cpu", False)], name


def test_a_run_logs_the_choices_and_keeps_auto_in_its_config(machine, tmp_path, tiny_data):
    """One epoch of ResNet-18 at 32 px: the log and run_info.json say what auto chose;
    config.yaml (what a resume and `rn50 bench --config` read) still says auto."""
    from rn50.train.loop import fit

    machine(1, 1, None)  # one worker process
    run = tmp_path / "run"
    fit(tiny_config(tiny_data, run, data={"workers": "auto"}, model={"arch": "resnet18"},
                    train={"epochs": 1}))
    lines = ["data.workers auto -> 1 (1 CPU for 1 process, sharing it with the training loop)",
             "data.decode auto -> cpu: the model runs on the CPU"]
    info = json.loads((run / "run_info.json").read_text())
    assert info["data_auto"] == {"workers": 1, "decode": "cpu", "why": lines}
    log = next(run.glob("training_log_*.txt")).read_text()
    assert all(line in log for line in lines)
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (data["workers"], data["decode"]) == ("auto", "auto")


def test_a_library_run_caps_a_worker_count_to_the_machine(machine, tmp_path, tiny_data,
                                                          capsys, monkeypatch):
    """rn50.train.loop's Trainer (what fit runs), called without the CLI: data.workers 64 on a
    2-CPU machine gives its loaders 2 workers, with the CLI's note, and config.yaml says 2."""
    from rn50.train.loop import Trainer

    machine(2, 1, None)
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(tiny_data, run, data={"workers": 64},
                                  model={"arch": "resnet18"}, train={"epochs": 1}))
    trainer.release()
    assert trainer.train_data.num_workers == 2 and trainer.val_data.num_workers == 2
    err = capsys.readouterr().err
    assert "rn50: note: data.workers 64 lowered to 2: this process may use 2 CPUs" in err, err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["workers"] == 2
    # torchrun's other ranks: their share, without a note each
    machine(2, 2, None)
    monkeypatch.setenv("RANK", "1")
    assert auto.choose_data(DataConfig(workers=64), torch.device("cpu")).data.workers == 1
    assert capsys.readouterr().err == ""
