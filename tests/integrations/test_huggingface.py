"""SparsityCallback in a real transformers.Trainer: a tiny BERT built from a config (no download),
on the CPU, with accumulation, mixed precision, clipping, weight decay, checkpoints and resume."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from itop.integrations.engine import SPARSIFIER_FILE
from itop.integrations.huggingface import SparsityCallback, refuse_sharded


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def examples(n=64):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (12,), generator=g), "labels": i % 2} for i in range(n)]


def arguments(out, **changes):
    settings = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=12,
        use_cpu=True,
        bf16=True,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        max_grad_norm=1.0,
        weight_decay=0.1,
        learning_rate=1e-3,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    return TrainingArguments(**{**settings, **changes})


def callback(**changes):
    return SparsityCallback(**{"density": 0.2, "grow": "gradient", "update_frequency": 3, "seed": 0, **changes})


def inactive_values(model, optimizer, sparsifier):
    """Largest magnitude of any inactive weight or optimizer state entry."""
    worst = 0.0
    for name, param in model.named_parameters():
        if name in sparsifier.masks:
            inactive = ~sparsifier.masks[name]
            if not inactive.any():  # ERK may leave a small layer dense
                continue
            worst = max(worst, float(param.detach()[inactive].abs().max()))
            for value in optimizer.state[param].values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    worst = max(worst, float(value[inactive].abs().max()))
    return worst


def test_counts_optimizer_steps_through_accumulation_and_keeps_inactive_weights_zero(tmp_path):
    cb = callback()
    trainer = Trainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=examples(), callbacks=[cb])
    trainer.train()
    sp = cb.sparsifier
    assert sp.steps == 12 and sp.config["total_steps"] == 12  # 12 optimizer steps of 2 accumulated batches
    assert [h["step"] for h in sp.history] == [0, 3, 6, 9, 12]
    assert sp.density == pytest.approx(0.2, abs=0.01) and sp.itop_rate > sp.density
    assert set(sp.masks) >= {"bert.encoder.layer.0.attention.self.query.weight", "classifier.weight"}
    assert inactive_values(trainer.model, cb.sparsifier.optimizer, sp) == 0.0  # AdamW, weight decay, clipping, bf16


@pytest.mark.parametrize("structure", [dict(structure="fan-in", ablation=True), dict(structure="2:4", density=None)], ids=["srigl", "2:4"])
def test_structured_sparsity_through_the_trainer(tmp_path, structure):
    cb = callback(**structure)
    trainer = Trainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=examples(), callbacks=[cb])
    trainer.train()
    sp = cb.sparsifier
    assert sp.steps == 12 and sp.itop_rate > sp.density
    for name, mask in sp.masks.items():
        if structure["structure"] == "2:4":
            assert bool((mask.reshape(-1, 4).sum(1) == 2).all()), name
        else:
            rows = mask.sum(1)
            assert rows[rows > 0].unique().numel() == 1, name
    assert inactive_values(trainer.model, sp.optimizer, sp) == 0.0  # AdamW, weight decay, clipping, bf16


@pytest.mark.parametrize("grow", ["none", "gradient"], ids=["gmp", "granet"])
def test_gradual_pruning_through_the_trainer(tmp_path, grow):
    cb = callback(grow=grow, initial_density=1.0, prune_end=6)
    trainer = Trainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=examples(), callbacks=[cb])
    trainer.train()
    sp = cb.sparsifier
    assert sum(sp.history[0]["nnz"].values()) == sum(s["numel"] for s in sp.layer_stats().values())  # dense at the start
    assert sp.at_final_density and sp.density == pytest.approx(0.2, abs=0.01) and sp.itop_rate == 1.0
    assert inactive_values(trainer.model, sp.optimizer, sp) == 0.0


def test_figures_reach_log_history_and_the_reporters(tmp_path):
    cb = callback(log_layers=True)
    args = arguments(tmp_path, report_to="tensorboard")  # events under output_dir/runs/
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=examples(), callbacks=[cb])
    assert type(trainer.callback_handler.callbacks[0]) is SparsityCallback  # ahead of TensorBoardCallback
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4, 6, 8, 10, 12]
    assert logged[-1]["sparsity/itop_rate"] == pytest.approx(cb.sparsifier.itop_rate)
    assert logged[0]["sparsity/density"] == pytest.approx(0.2, abs=0.01) and logged[1]["sparsity/prune_rate"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [
        EventAccumulator(str(path.parent), size_guidance={"histograms": 0}).Reload()
        for path in (tmp_path / "runs").rglob("events.out.tfevents.*")
    ]
    tags = {tag for e in events for tag in e.Tags()["scalars"]}
    histograms = [
        h.step
        for e in events
        if "train/sparsity/layer_densities" in e.Tags()["histograms"]
        for h in e.Histograms("train/sparsity/layer_densities")
    ]
    assert histograms == [3, 6, 9, 12]  # at each topology update
    assert {"train/sparsity/itop_rate", "train/sparsity/density", "train/layer_explored/classifier.weight"} <= tags
    assert logged[-1]["layer_density/bert.encoder.layer.1.output.dense.weight"] == pytest.approx(
        cb.sparsifier.layer_stats()["bert.encoder.layer.1.output.dense.weight"]["density"]
    )


class SkipsOneStep(nn.Module):
    """A tiny classifier whose loss is infinite on one forward: the fp16 GradScaler skips that step."""

    def __init__(self, bad_forward):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        self.forwards, self.bad_forward = 0, bad_forward

    def forward(self, x, labels):
        self.forwards += 1
        loss = nn.functional.cross_entropy(self.net(x), labels)
        return {"loss": loss * float("inf") if self.forwards == self.bad_forward else loss}


class Snapshots(TrainerCallback):
    """Masks and weights at the end of every Trainer step."""

    def __init__(self, cb):
        self.cb, self.masks, self.weights = cb, {}, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.masks[state.global_step] = {n: m.clone() for n, m in self.cb.sparsifier.masks.items()}
        self.weights[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_step_the_grad_scaler_skips_moves_neither_masks_nor_schedule(tmp_path):
    data = [{"x": torch.randn(8, generator=torch.Generator().manual_seed(i)), "labels": i % 2} for i in range(64)]
    model = SkipsOneStep(bad_forward=9)  # accumulation 2: the 5th optimizer step, which is an update step
    cb = SparsityCallback(density=0.3, grow="gradient", update_frequency=5, seed=0)
    snapshots = Snapshots(cb)
    args = arguments(tmp_path, bf16=False, max_steps=10)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb, snapshots])
    # accelerate makes no GradScaler on a CPU (fp16 needs a GPU there): give it the one it makes on a GPU
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
    trainer.train()
    assert trainer.state.global_step == 10 and cb.sparsifier.steps == 9  # the Trainer counts the skipped step, the schedule not
    assert [h["step"] for h in cb.sparsifier.history] == [0, 5]  # the update came one Trainer step late
    for name in snapshots.masks[4]:
        assert torch.equal(snapshots.masks[4][name], snapshots.masks[5][name])
    assert all(torch.equal(snapshots.weights[4][n], snapshots.weights[5][n]) for n in snapshots.weights[4])
    assert any(not torch.equal(snapshots.masks[5][n], snapshots.masks[6][n]) for n in snapshots.masks[5])


class StateAtStart(TrainerCallback):
    """The Sparsifier's state and the model's weights when training (re)starts, after SparsityCallback."""

    def __init__(self, cb):
        self.cb = cb

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.state = self.cb.sparsifier.state_dict()
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_state(a, b):
    assert a["steps"] == b["steps"] and a["seed"] == b["seed"] and torch.equal(a["generator"], b["generator"])
    for key in ("masks", "explored"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][n], b[key][n]) for n in a[key])


def test_resume_from_a_checkpoint_continues_with_the_saved_sparsifier(tmp_path):
    first = callback()
    args = arguments(tmp_path, save_strategy="steps", save_steps=6)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=examples(), callbacks=[first])
    trainer.train()
    saved = torch.load(tmp_path / "checkpoint-6" / SPARSIFIER_FILE, weights_only=True)
    assert saved["global_step"] == 6 and saved["sparsifier"]["steps"] == 6

    resumed, start = callback(), None
    start = StateAtStart(resumed)
    trainer = Trainer(model=tiny_bert(seed=5), args=args, train_dataset=examples(), callbacks=[resumed, start])
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert_same_state(start.state, saved["sparsifier"])
    from safetensors.torch import load_file

    checkpoint = load_file(tmp_path / "checkpoint-6" / "model.safetensors")
    for name, weight in start.weights.items():
        assert torch.equal(weight, checkpoint[name]), name  # the loaded weights survived the Sparsifier's construction
    assert resumed.sparsifier.steps == 12
    # The Trainer restores its RNG and skips the data it saw: the resumed run ends where the whole one did.
    assert_same_state(resumed.sparsifier.state_dict(), first.sparsifier.state_dict())


def test_resuming_without_the_sparsifier_file_says_what_to_do(tmp_path):
    args = arguments(tmp_path, save_strategy="steps", save_steps=6)
    Trainer(model=tiny_bert(), args=args, train_dataset=examples(), callbacks=[callback()]).train()
    (tmp_path / "checkpoint-6" / SPARSIFIER_FILE).unlink()
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=examples(), callbacks=[callback()])
    with pytest.raises(ValueError, match=r"resumes at step 6 but no itop_sparsifier.pt .*resume_from=..."):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))


def test_bad_arguments_and_sharded_strategies_are_refused_up_front():
    with pytest.raises(ValueError, match="unknown Sparsifier argument 'densty'"):
        SparsityCallback(densty=0.1)
    with pytest.raises(ValueError, match="takes the optimizer from the trainer"):
        SparsityCallback(optimizer=None)
    for args, name in (
        (SimpleNamespace(deepspeed="ds.json", fsdp=None), "DeepSpeed"),
        (SimpleNamespace(deepspeed=None, fsdp="full_shard"), "FSDP"),
    ):
        with pytest.raises(ValueError, match=f"cannot train under {name}"):
            refuse_sharded(args)


def torchrun_ranks(tmp_path, kind):
    """Both ranks' saved masks, Rs and weights from ddp_worker.py under a 2-process torchrun, checked to agree."""
    import subprocess
    import sys

    worker = Path(__file__).with_name("ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), kind, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["seed"] == ranks[1]["seed"] and ranks[0]["itop_rate"] == ranks[1]["itop_rate"] > 0.2
    for name, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][name]), name
    for name, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][name]), name
    return ranks


def test_two_ddp_ranks_hold_the_same_masks(tmp_path):
    ranks = torchrun_ranks(tmp_path, "huggingface")
    assert ranks[0]["steps"] == ranks[1]["steps"] == 8


def test_the_callback_goes_ahead_of_the_reporters_even_when_subclassed(tmp_path):
    class Mine(SparsityCallback):
        def on_init_end(self, args, state, control, **kwargs):
            return super().on_init_end(args, state, control, **kwargs)

    mine = Mine(density=0.2)
    trainer = Trainer(model=tiny_bert(), args=arguments(tmp_path, report_to="tensorboard"), train_dataset=examples(), callbacks=[mine])
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names[0] == "Mine" and "TensorBoardCallback" in names and names.count("Mine") == 1


def readme_vit_trainer(out, callbacks, epochs):
    """The Hugging Face example of docs/trainers.md (its ViT, its data, its settings), over fewer epochs and digits."""
    from transformers import ViTConfig, ViTForImageClassification, set_seed

    from itop.data import load_dataset

    digits = load_dataset("mnist5k")

    def examples_of(split, n):
        return [{"pixel_values": (x.float() / 255 - 0.1307) / 0.3081, "labels": int(y)} for x, y in zip(split.images[:n], split.labels[:n])]

    set_seed(0)
    config = ViTConfig(
        image_size=28,
        patch_size=7,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
    )
    args = TrainingArguments(
        str(out),
        num_train_epochs=epochs,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=500,
        learning_rate=3e-3,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_steps=10,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    return Trainer(
        model=ViTForImageClassification(config),
        args=args,
        callbacks=callbacks,
        train_dataset=examples_of(digits.train, 1280),
        eval_dataset=examples_of(digits.test, 500),
        compute_metrics=lambda p: {"accuracy": (p.predictions.argmax(-1) == p.label_ids).mean()},
    )


def test_the_readme_vit_resumed_ends_where_the_whole_run_does(tmp_path):
    whole = SparsityCallback(density=0.2, grow="gradient", update_frequency=20)
    trainer = readme_vit_trainer(tmp_path, [whole], epochs=2)
    trainer.train()
    expected = trainer.evaluate()["eval_accuracy"]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    import shutil

    shutil.rmtree(tmp_path / "checkpoint-40")  # stopped after the first epoch
    resumed = SparsityCallback(density=0.2, grow="gradient", update_frequency=20)
    trainer = readme_vit_trainer(tmp_path, [resumed], epochs=2)  # transformers 5 cannot load ViT's renamed weights itself
    trainer.train(resume_from_checkpoint=True)
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(expected, abs=1e-9)
    for name, weight in trainer.model.named_parameters():
        assert torch.allclose(weight, weights[name], atol=1e-6), name
    assert_same_state(resumed.sparsifier.state_dict(), whole.sparsifier.state_dict())


def test_resuming_onto_other_weights_is_refused_in_one_line(tmp_path):
    args = arguments(tmp_path, save_strategy="steps", save_steps=6)
    Trainer(model=tiny_bert(), args=args, train_dataset=examples(), callbacks=[callback()]).train()
    from safetensors.torch import load_file, save_file

    path = tmp_path / "checkpoint-6" / "model.safetensors"
    untrained = {n: t.contiguous() for n, t in tiny_bert(seed=3).state_dict().items() if n in load_file(path)}
    save_file(untrained, path, metadata={"format": "pt"})  # a checkpoint whose weights are not the run's
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=examples(), callbacks=[callback()])
    with pytest.raises(ValueError, match=r"the Trainer did not restore the model's weights from .*checkpoint-6 \(\d+ weights of") as error:
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert "\n" not in str(error.value)


def test_a_run_extended_on_resume_stretches_or_keeps_the_decay(tmp_path, caplog):
    args = arguments(tmp_path, save_strategy="steps", save_steps=12)
    Trainer(model=tiny_bert(), args=args, train_dataset=examples(), callbacks=[callback()]).train()
    longer = arguments(tmp_path, save_strategy="no", max_steps=18)
    for horizon, decay_end in (("stretch", 18), ("keep", 12)):
        cb = callback(horizon=horizon)
        trainer = Trainer(model=tiny_bert(), args=longer, train_dataset=examples(), callbacks=[cb])
        with caplog.at_level("WARNING", logger="itop"):
            trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-12"))
        assert cb.sparsifier.steps == 18 and cb.sparsifier.schedule.total_steps == decay_end
        assert [h["step"] for h in cb.sparsifier.history][-2:] == [15, 18]
        assert f"the prune-rate decay now ends at step {decay_end}" in caplog.text
    with pytest.raises(ValueError, match="horizon='sideways'"):
        SparsityCallback(horizon="sideways")
