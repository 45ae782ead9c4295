"""`itop train` end to end on tiny runs: outputs, resume, bad input."""

import json
from pathlib import Path

import pytest
import torch

from itop import allocator
from itop.__main__ import main
from itop.train import loop

TINY = [
    "--sparse",
    "--model",
    "lenet300-100",
    "--data",
    "mnist5k",
    "--epochs",
    "3",
    "--batch-size",
    "200",
    "--growth",
    "gradient",
    "--update_frequency",
    "7",
    "--no-progress",
    "--seed",
    "3",
]


def run(argv, capsys):
    code = main(["train", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def records(run_dir, kind):
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def interrupt_in_epoch(monkeypatch, epoch):
    """Make the run stop with Ctrl-C at the start of its `epoch`-th epoch; returns the undo."""
    original, calls = loop.Run.train_epoch, {"n": 0}

    def train_epoch(self):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(loop.Run, "train_epoch", train_epoch)
    return lambda: monkeypatch.setattr(loop.Run, "train_epoch", original)


def test_tiny_run_writes_everything_and_the_table(capsys):
    code, out, err = run([*TINY, "--save", "runs/a"], capsys)
    assert code == 0, err
    files = {p.name for p in Path("runs/a").iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "summary.json"} <= files
    summary = json.loads(Path("runs/a/summary.json").read_text())
    assert summary["method"] == "RigL-ITOP" and summary["sparsity"] == pytest.approx(0.95, abs=1e-4)
    assert summary["density"] < summary["itop_rate"] <= 1 and 0 < summary["test_acc"] <= 1 and 0 < summary["final_test_acc"] <= 1
    assert 0.05 < summary["training_flops"] < 0.2 and summary["test_flops"] == pytest.approx(0.05, abs=0.01)
    assert "| Method | Sparsity | Top-1 Acc | Rs | Training FLOPs | Test FLOPs |" in out
    assert "| RigL-ITOP | 0.95 |" in out
    epochs, updates = records("runs/a", "epoch"), records("runs/a", "update")
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["step"] for r in updates] == list(range(7, 55, 7))  # 18 steps/epoch x 3
    rates = [r["itop_rate"] for r in updates]
    assert rates == sorted(rates) and set(updates[0]["layer_density"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert out.count("epoch ") >= 3
    state = torch.load("runs/a/checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and state["sparsifier"]["steps"] == 54


def test_dense_run(capsys, monkeypatch):
    for name in (*allocator.USER_SETTINGS, "ITOP_MALLOC"):
        monkeypatch.delenv(name, raising=False)
    code, out, _ = run(
        ["--model", "lenet5", "--data", "mnist5k", "--epochs", "1", "--batch-size", "500", "--no-progress", "--save", "d"], capsys
    )
    assert code == 0 and "| Dense | 0.0 |" in out and "1x(" in out
    if allocator.GLIBC:
        assert allocator.status() == allocator.KEPT  # itop train set it


@pytest.mark.parametrize(
    "epochs, extra",
    [
        ("3", []),
        ("2", []),
        ("2", ["--structure", "2:4"]),
        ("3", ["--gradual", "--growth", "gradient", "--prune-end", "2"]),
        ("2", ["--init", "snip"]),
    ],
    # LR milestones by epochs (3) and by steps (2: too short for epoch milestones); a structured run; GraNet; RigL from SNIP
    ids=["3", "2", "2:4", "granet", "snip"],
)
def test_resume_equals_uninterrupted(epochs, extra, capsys, monkeypatch):
    assert run([*TINY, *extra, "--epochs", epochs, "--save", "full"], capsys)[0] == 0

    restore = interrupt_in_epoch(monkeypatch, int(epochs))
    code, _, err = run([*TINY, *extra, "--epochs", epochs, "--save", "cut"], capsys)
    assert code == 130 and "--resume" in err
    restore()
    code, _, err = run(["--resume", "cut", "--no-progress"], capsys)
    assert code == 0, err

    full, cut = (torch.load(f"{d}/checkpoint.pt", weights_only=True) for d in ("full", "cut"))
    for key, value in full["model"].items():
        assert torch.equal(value, cut["model"][key]), key
    for name, mask in full["sparsifier"]["masks"].items():
        assert torch.equal(mask, cut["sparsifier"]["masks"][name])

    def strip(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    for kind in ("epoch", "update"):
        assert strip(records("full", kind)) == strip(records("cut", kind))
    assert json.loads(Path("full/summary.json").read_text())["test_acc"] == json.loads(Path("cut/summary.json").read_text())["test_acc"]


def test_nan_loss_stops_and_keeps_last_checkpoint(capsys, monkeypatch):
    original = loop.Run.train_epoch

    def poisoned(self):
        if self.epoch == 1:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(loop.Run, "train_epoch", poisoned)
    code, _, err = run([*TINY, "--save", "nan"], capsys)
    assert code == 1 and "loss became nan" in err and "checkpoint" in err
    assert torch.load("nan/checkpoint.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vgg-z", "--data", "mnist5k"], "unknown model 'vgg-z'"),
        (["--model", "lenet5", "--data", "svhn"], "unknown dataset 'svhn'"),
        (["--model", "lenet5", "--growth", "rigl"], "--growth must be"),
        (["--model", "lenet5", "--death", "largest"], "--death must be"),
        (["--model", "lenet5", "--density", "1.5"], "--density must be in (0, 1]"),
        (["--model", "lenet5", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--model", "lenet5", "--data", "mnist"], "train-images-idx3-ubyte.gz"),
        (["--model", "lenet5", "--data", "cifar10"], "cifar-10"),
        (["--resume", "nowhere"], "no such directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("itop train: error: ") and message in err
    assert "Traceback" not in err


def test_corrupt_data_file(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (data / name).write_bytes(b"not a gzip file")
    code, _, err = run(["--model", "lenet5", "--data", "mnist"], capsys)
    assert code == 2 and "train-images-idx3-ubyte.gz" in err and err.count("\n") == 1


def test_resume_refuses_non_runs_and_corrupt_or_foreign_checkpoints(capsys):
    Path("empty").mkdir()
    code, _, err = run(["--resume", "empty"], capsys)
    assert code == 2 and "not an itop run directory" in err

    assert run([*TINY, "--epochs", "1", "--save", "r"], capsys)[0] == 0
    good = Path("r/checkpoint.pt").read_bytes()
    Path("r/checkpoint.pt").write_bytes(good[: len(good) // 2])
    code, _, err = run(["--resume", "r"], capsys)
    assert code == 2 and "corrupt" in err
    assert Path("r/checkpoint.pt").read_bytes() == good[: len(good) // 2]  # nothing overwritten

    Path("r/checkpoint.pt").write_bytes(good)
    config = json.loads(Path("r/config.json").read_text())
    config["density"] = 0.1
    Path("r/config.json").write_text(json.dumps(config))
    code, _, err = run(["--resume", "r"], capsys)
    assert code == 2 and "another configuration" in err


def test_existing_run_directory_is_not_overwritten(capsys):
    assert run([*TINY, "--epochs", "1", "--save", "x"], capsys)[0] == 0
    before = Path("x/checkpoint.pt").read_bytes()
    code, _, err = run([*TINY, "--epochs", "1", "--save", "x"], capsys)
    assert code == 2 and "--resume x" in err and Path("x/checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("method", ["Dense", "SET-ITOP", "RigL-ITOP", "SET-ITOP (5 times)", "RigL-ITOP (5 times)"])
def test_seed_readme_cifar_commands_run_on_a_tiny_cifar10(method, capsys, tmp_path):
    from tests.data.formats import write_cifar10_dir
    from tests.train.test_config import SEED_COMMANDS

    write_cifar10_dir(tmp_path / "data", per_batch=6, n_test=8)
    argv = SEED_COMMANDS[method].replace("--epochs 250", "--epochs 1").split()
    argv += ["--no-progress", "--update_frequency", "2", "--batch-size", "8", "--save", "seed-run"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    summary = json.loads(Path("seed-run/summary.json").read_text())
    assert summary["method"] == method and summary["model"] == "vgg-c" and summary["data"] == "cifar10"
    assert summary["steps"] == 4 * (5 if "5 times" in method else 1)  # 27 training images, batch 8
    assert f"| {method} |" in out


def test_report_on_two_finished_runs(capsys):
    assert run([*TINY, "--epochs", "1", "--save", "runs/rigl"], capsys)[0] == 0
    assert run([*TINY, "--epochs", "1", "--growth", "random", "--density", "0.1", "--save", "runs/set"], capsys)[0] == 0
    assert main(["report", "runs/rigl", "runs/set", "--out", "rep"]) == 0
    out = capsys.readouterr().out
    assert "| RigL-ITOP | 0.95 |" in out and "| SET-ITOP | 0.9 |" in out
    for name in ("results.md", "accuracy_vs_sparsity.png", "itop_rate.png", "layer_density_rigl.png"):
        assert Path("rep", name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" or name.endswith(".md")


def test_imagenet_folder_run(capsys, tmp_path):
    from tests.data.formats import write_image_tree

    write_image_tree(tmp_path / "imnet" / "train", per_class=3)
    write_image_tree(tmp_path / "imnet" / "val", per_class=1)
    argv = [
        "--arch",
        "resnet18",
        "-c",
        "fanin",
        "-b",
        "2",
        "--test-batch-size",
        "2",
        "--epochs",
        "1",
        "-j",
        "0",
        "--update_frequency",
        "2",
        "--growth",
        "gradient",
        "--density",
        "0.2",
        "--no-progress",
        "--save",
        "im",
        str(tmp_path / "imnet"),
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    summary = json.loads(Path("im/summary.json").read_text())
    assert summary["model"] == "imagenet-resnet18" and summary["steps"] == 3 and summary["method"] == "RigL-ITOP"
    assert torch.load("im/best.pt", weights_only=True)["model"]["fc.weight"].shape[0] == 2


def test_valid_split_zero_and_threshold_death_and_amp(capsys):
    argv = [
        *TINY,
        "--epochs",
        "2",
        "--valid_split",
        "0",
        "--death",
        "threshold",
        "--threshold",
        "0.01",
        "--redistribution",
        "magnitude",
        "--amp",
        "bf16",
        "--save",
        "v0",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    summary = json.loads(Path("v0/summary.json").read_text())
    assert summary["best_epoch"] == 2 and summary["best_val_acc"] is None
    assert summary["density"] == pytest.approx(0.05, abs=1e-4)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vgg-d", "--data", "mnist5k"], "too small"),
        (["--model", "lenet5", "--data", "mnist5k", "--valid_split", "0.9999"], "valid"),
        (["--model", "lenet5", "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--model", "lenet5", "--evaluate"], "--evaluate"),
        (["--model", "lenet5", "--growth", "random_unfired"], "--growth must be"),
    ],
)
def test_flags_this_dataset_or_machine_cannot_take_are_one_line_and_exit_2(argv, message, capsys):
    code, _, err = run([*argv, "--epochs", "1", "--save", "bad"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not Path("bad").exists()  # nothing written for a run that never started


def test_save_onto_a_file_is_refused(capsys):
    Path("afile").write_text("keep me")
    code, _, err = run([*TINY, "--epochs", "1", "--save", "afile"], capsys)
    assert code == 2 and "is a file" in err and Path("afile").read_text() == "keep me"


def test_run_that_stopped_before_its_first_checkpoint_can_be_started_again_or_resumed(capsys, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop.Run, "train_epoch", interrupted)
        code, _, err = run([*TINY, "--epochs", "1", "--save", "early"], capsys)
    assert code == 130 and "--resume early" in err and not Path("early/checkpoint.pt").exists()
    code, out, err = run(["--resume", "early", "--no-progress"], capsys)
    assert code == 0 and "starting it from the beginning" in out, err
    assert [r["epoch"] for r in records("early", "epoch")] == [1]
    Path("early/checkpoint.pt").unlink()
    code, _, err = run([*TINY, "--epochs", "1", "--save", "early"], capsys)  # a fresh start may take it too
    assert code == 0, err


def test_resume_takes_only_settings_that_do_not_change_results(capsys):
    assert run([*TINY, "--epochs", "1", "--save", "r1"], capsys)[0] == 0
    code, _, err = run(["--resume", "r1", "--epochs", "10"], capsys)
    assert code == 2 and "--epochs cannot be given with it" in err
    code, _, err = run(["--resume", "r1", "--no-progress", "--device", "cpu", "-j", "0"], capsys)
    assert code == 0, err


def test_divergence_in_the_first_epoch_says_there_is_no_checkpoint(capsys):
    code, _, err = run([*TINY, "--lr", "1e12", "--save", "nan1"], capsys)
    assert code == 1 and "no epoch had finished, so there is no checkpoint" in err and "--amp" not in err


def test_an_error_raised_in_a_loader_worker_is_reported_on_one_line():
    from torch.utils.data import DataLoader, Dataset

    from itop.data import DataError
    from itop.train.cli import _one_line

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise DataError("photo.JPEG: cannot decode image (truncated).")

    with pytest.raises(DataError) as caught:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Traceback" in str(caught.value)
    assert _one_line(caught.value) == "photo.JPEG: cannot decode image (truncated)."


def test_extended_runs_count_training_flops_against_a_1x_dense_run(capsys):
    """The extended rows of the original ITOP code's README: "RigL-ITOP (2 times)" costs twice its 1x ratio, and the
    absolute figure beside dense stays that of a 1x dense run."""
    base = ["--model", "lenet300-100", "--data", "mnist5k", "--epochs", "1", "--batch-size", "500", "--no-progress"]
    summaries = {}
    for name, extra in {
        "sparse1": ["--sparse", "--fix"],
        "sparse2": ["--sparse", "--fix", "--multiplier", "2"],
        "dense1": [],
        "dense2": ["--multiplier", "2"],
    }.items():
        code, out, err = run([*base, *extra, "--save", name], capsys)
        assert code == 0, err
        summaries[name] = json.loads(Path(name, "summary.json").read_text())
    assert summaries["sparse2"]["training_flops"] == pytest.approx(2 * summaries["sparse1"]["training_flops"], rel=1e-6)
    assert summaries["dense1"]["training_flops"] == 1.0 and summaries["dense2"]["training_flops"] == 2.0
    assert len({s["dense_training_flops"] for s in summaries.values()}) == 1
    assert "| Dense (2 times) | 0.0 |" in out and "| 2x(" in out


def test_the_first_line_gives_the_lr_schedule_and_a_one_epoch_demo_learns(capsys):
    """One epoch decays by steps (the original's milestones would both be epoch 0: lr / 100 throughout, 10% accuracy)."""
    code, out, err = run(["--epochs", "1", "--no-progress", "--save", "demo1"], capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith("run directory: demo1") and "lr 0.1, x0.1 after steps 18 and 27" in out.splitlines()[0]
    assert json.loads(Path("demo1/summary.json").read_text())["test_acc"] > 0.2  # 37.6% measured; 10.0% before


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "lenet5", "--sparse"],
        ["--model", "lenet5", "--data", "fashion-mnist"],
        ["--model", "lenet5", "--data", "cifar100"],
        ["--model", "lenet5", "--data", "absent.csv"],
        ["--arch", "resnet18", "no-imagenet-here"],
        ["--model", "lenet5", "--data", "imagenet"],
    ],
)
def test_missing_data_offline_names_the_embedded_digits(argv, capsys, monkeypatch):
    from itop.data import download

    def offline(url, dest, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(download, "download_url", offline)
    code, out, err = run([*argv, "--epochs", "1", "--save", "nodata"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("itop train: error: ") and "Traceback" not in err
    assert "5,000 MNIST digits that come with itop" in err and "--data mnist5k" in err, err


def test_set_mlp_without_data_trains_on_the_embedded_digits(capsys):
    code, out, err = run(["--model", "set-mlp", "--hidden", "32", "--sparse", "--epochs", "1", "--no-progress", "--save", "s"], capsys)
    assert code == 0, err
    assert "set-mlp on mnist5k" in out.splitlines()[0]


@pytest.mark.parametrize("flag", ["--epochs", "--multiplier"])
def test_resume_refuses_a_new_length_and_says_how_to_train_longer(flag, capsys):
    assert run([*TINY, "--epochs", "1", "--save", "r2"], capsys)[0] == 0
    code, _, err = run(["--resume", "r2", flag, "10"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{flag} cannot be given with it" in err and "LR milestones" in err and "prune-rate decay" in err
    assert f"to train longer, start a new run with a larger {flag} and another --save" in err


def test_structured_runs_name_their_structure_and_keep_it(capsys):
    code, out, err = run([*TINY, "--structure", "fan-in", "--ablation", "--save", "srigl"], capsys)
    assert code == 0, err
    assert "| RigL-ITOP fan-in+ablation | 0.95" in out
    masks = torch.load("srigl/checkpoint.pt", weights_only=True)["sparsifier"]["masks"]
    for name, mask in masks.items():
        rows = mask.reshape(mask.shape[0], -1).sum(1)
        assert rows[rows > 0].unique().numel() == 1, name
    lenet5 = ["--sparse", "--model", "lenet5", "--data", "mnist5k", "--epochs", "1", "--batch-size", "500", "--no-progress"]
    code, out, err = run([*lenet5, "--structure", "2:4", "--update_frequency", "3", "--save", "nm"], capsys)
    assert code == 0, err
    assert "--structure 2:4: conv1.weight stay dense (rows not a multiple of 4)." in out and "| SET-ITOP 2:4 | 0.5" in out
    masks = torch.load("nm/checkpoint.pt", weights_only=True)["sparsifier"]["masks"]
    assert "conv1.weight" not in masks and all(bool((m.reshape(-1, 4).sum(1) == 2).all()) for m in masks.values())


@pytest.mark.parametrize(
    "extra, method",
    [
        (["--init", "snip", "--fix"], "SNIP"),
        (["--init", "grasp", "--fix"], "GraSP"),
        (["--init", "synflow", "--fix"], "SynFlow"),
        (["--init", "snip"], "RigL-ITOP from SNIP"),
        (["--gradual", "--growth", "none"], "GMP"),
        (["--gradual", "--growth", "gradient", "--prune-end", "2"], "GraNet"),
    ],
)
def test_baselines_name_their_method_and_end_at_the_final_density(extra, method, capsys):
    code, out, err = run([*TINY, *extra, "--save", "b"], capsys)
    assert code == 0, err
    summary = json.loads(Path("b/summary.json").read_text())
    assert summary["method"] == method and f"| {method} | 0.95 |" in out
    assert summary["density"] == pytest.approx(0.05, abs=1e-4)
    if "--fix" in extra:
        assert summary["itop_rate"] == summary["density"]  # static: nothing explored beyond the initial masks
    if "--gradual" in extra:  # every weight was active at the start: Rs 1, and more training FLOPs than the sparse methods
        assert summary["itop_rate"] == 1.0 and summary["training_flops"] > 0.2
        assert summary["best_epoch"] * 18 >= 36  # only epochs at the final density are reported


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--init", "lottery"], "--init must be"),
        (["--init", "snip", "--truly-sparse"], "--truly-sparse"),
        (["--gradual", "--fix"], "--fix"),
        (["--gradual", "--init", "snip"], "give one of them"),
        (["--gradual", "--initial-density", "0.01"], "--initial-density"),
        (["--gradual", "--prune-start", "2", "--prune-end", "1"], "--prune-start"),
        (["--gradual", "--update_frequency", "500"], "no topology update"),
    ],
)
def test_baseline_flags_that_cannot_work_are_refused_in_one_line(extra, words, capsys):
    code, _, err = run([*TINY, *extra, "--save", "bad"], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not Path("bad").exists()
