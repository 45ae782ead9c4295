"""SparsityCallback in a real lightning.pytorch.Trainer: a small MLP on the CPU, with accumulation,
bf16 autocast, clipping, weight decay, a skipped step, loggers, checkpoints and resume."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from itop.integrations.lightning import SparsityCallback, refuse_sharded


class Classifier(pl.LightningModule):
    """An MLP on 16 features; `skip` names optimizer steps (1-based) its optimizer_step leaves out."""

    def __init__(self, skip=(), infinite_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
        self.skip, self.infinite_at, self.calls, self.stepped = set(skip), infinite_at, 0, 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        return loss * float("inf") if batch_idx == self.infinite_at else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        self.calls += 1
        if self.calls in self.skip:  # a module that decides not to step (the closure still runs the backward)
            optimizer_closure()
            return
        self.stepped += 1
        optimizer.step(closure=optimizer_closure)


def loader(n=64):
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 3, (n,), generator=g)), batch_size=4)


def trainer(tmp_path, callbacks, **changes):
    settings = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        accumulate_grad_batches=2,
        precision="bf16-mixed",
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        deterministic=True,
    )
    return pl.Trainer(callbacks=callbacks, **{**settings, **changes})


def callback(**changes):
    return SparsityCallback(**{"density": 0.2, "grow": "gradient", "update_frequency": 4, "seed": 0, **changes})


def test_counts_optimizer_steps_through_accumulation_and_keeps_inactive_weights_zero(tmp_path):
    cb, module = callback(), Classifier()
    trainer(tmp_path, [cb]).fit(module, loader())
    sp = cb.sparsifier
    assert sp.steps == 16 and sp.config["total_steps"] == 16  # 2 epochs x 16 batches / accumulation 2
    assert [h["step"] for h in sp.history] == [0, 4, 8, 12, 16]
    assert sp.itop_rate > sp.density
    checked = 0
    for name, param in module.named_parameters():
        inactive = ~sp.masks[name] if name in sp.masks else None
        if inactive is not None and inactive.any():  # ERK leaves the 64x3 output layer dense
            assert float(param.detach()[inactive].abs().max()) == 0.0, name
            assert float(sp.optimizer.state[param]["momentum_buffer"][inactive].abs().max()) == 0.0, name
            checked += 1
    assert checked == 2


@pytest.mark.parametrize("structure", [dict(structure="fan-in", ablation=True), dict(structure="2:4", density=None)], ids=["srigl", "2:4"])
def test_structured_sparsity_through_the_trainer(tmp_path, structure):
    cb, module = callback(**structure), Classifier()
    trainer(tmp_path, [cb]).fit(module, loader())
    sp = cb.sparsifier
    assert sp.steps == 16 and sp.itop_rate > sp.density
    for name, mask in sp.masks.items():
        if structure["structure"] == "2:4":
            assert bool((mask.reshape(-1, 4).sum(1) == 2).all()), name
        else:
            rows = mask.sum(1)
            assert rows[rows > 0].unique().numel() == 1, name
        assert float(dict(module.named_parameters())[name].detach()[~mask].abs().sum()) == 0.0, name


@pytest.mark.parametrize("grow", ["none", "gradient"], ids=["gmp", "granet"])
def test_gradual_pruning_through_the_trainer(tmp_path, grow):
    cb, module = callback(grow=grow, initial_density=1.0, prune_end=8), Classifier()
    trainer(tmp_path, [cb]).fit(module, loader())
    sp = cb.sparsifier
    assert [sum(h["nnz"].values()) for h in sp.history][0] == sum(s["numel"] for s in sp.layer_stats().values())
    assert sp.at_final_density and sp.density == pytest.approx(0.2, abs=0.01) and sp.itop_rate == 1.0
    for name, mask in sp.masks.items():
        assert float(dict(module.named_parameters())[name].detach()[~mask].abs().sum()) == 0.0, name


def test_a_step_the_module_skips_moves_neither_masks_nor_schedule(tmp_path):
    cb, module = callback(), Classifier(skip={4})  # the 4th step would end with an update
    trainer(tmp_path, [cb]).fit(module, loader())
    assert module.stepped == 15 and cb.sparsifier.steps == 15
    assert [h["step"] for h in cb.sparsifier.history] == [0, 4, 8, 12]


def test_a_step_the_grad_scaler_skips_moves_neither_masks_nor_schedule(tmp_path):
    from lightning.pytorch.plugins.precision import MixedPrecision

    cb, module = callback(update_frequency=2), Classifier(infinite_at=3)  # batches 2-3: the 2nd step, an update
    scaler = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer(tmp_path, [cb], precision=None, plugins=[scaler], max_epochs=1).fit(module, loader())
    assert module.stepped == 8 and cb.sparsifier.steps == 7  # Lightning has no flag for it: the hooks saw no step
    assert [h["step"] for h in cb.sparsifier.history] == [0, 2, 4, 6]


def test_figures_reach_the_loggers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = callback(log_layers=True)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer(tmp_path, [cb], logger=logger, log_every_n_steps=1).fit(Classifier(), loader())
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0}).Reload()
    assert {
        "sparsity/density",
        "sparsity/itop_rate",
        "sparsity/prune_rate",
        "layer_density/net.0.weight",
        "layer_explored/net.2.weight",
    } <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Histograms("sparsity/layer_densities")] == [4, 8, 12, 16]  # at each update
    explored = events.Scalars("layer_explored/net.0.weight")
    assert explored[-1].value == pytest.approx(cb.sparsifier.layer_stats()["net.0.weight"]["explored"], rel=1e-6)
    rates = events.Scalars("sparsity/itop_rate")
    assert rates[-1].value == pytest.approx(cb.sparsifier.itop_rate, rel=1e-6) and rates[0].value < rates[-1].value


class StateAtStart(pl.Callback):
    """The Sparsifier's state and the module's weights when training (re)starts."""

    def __init__(self, cb):
        self.cb = cb

    def on_train_start(self, trainer, pl_module):
        self.state = self.cb.sparsifier.state_dict()
        self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def test_resume_from_a_checkpoint_continues_with_the_saved_sparsifier(tmp_path):
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=8, save_top_k=-1, filename="{step}")
    first = callback()
    trainer(tmp_path, [first, saving], enable_checkpointing=True).fit(Classifier(), loader())
    path = tmp_path / "ckpt" / "step=8.ckpt"
    saved = torch.load(path, weights_only=True)
    state = saved["callbacks"]["SparsityCallback"]["sparsifier"]
    assert state["steps"] == 8

    resumed = callback()
    start = StateAtStart(resumed)
    trainer(tmp_path, [resumed, start]).fit(Classifier(), loader(), ckpt_path=str(path))
    assert start.state["steps"] == 8 and start.state["seed"] == state["seed"]
    assert torch.equal(start.state["generator"], state["generator"])
    for key in ("masks", "explored"):
        assert all(torch.equal(start.state[key][n], state[key][n]) for n in state[key])
    for name, weight in start.weights.items():
        assert torch.equal(weight, saved["state_dict"][name]), name  # kept as loaded through the Sparsifier's construction
    assert resumed.sparsifier.steps == 16 and [h["step"] for h in resumed.sparsifier.history] == [0, 4, 8, 12, 16]


def test_bad_arguments_and_sharded_strategies_are_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="unknown Sparsifier argument 'grown'"):
        SparsityCallback(grown="gradient")
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    for kind in (DeepSpeedStrategy, FSDPStrategy):
        with pytest.raises(ValueError, match=f"cannot train under {kind.__name__}"):
            refuse_sharded(kind.__new__(kind))
    refuse_sharded(SimpleNamespace())  # anything else passes


def test_training_without_an_end_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs the length of training"):
        trainer(tmp_path, [callback()], max_epochs=-1).fit(Classifier(), loader())


def test_two_ddp_ranks_hold_the_same_masks(tmp_path):
    from .test_huggingface import torchrun_ranks

    ranks = torchrun_ranks(tmp_path, "lightning")
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4  # 64 examples / 2 ranks / batch 4 / accumulation 2
