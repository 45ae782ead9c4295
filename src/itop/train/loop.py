"""One training run, top to bottom: data, model, optimizer, sparsifier, epochs, checkpoints, summary.

The sparse part is the three lines any user writes: build an `itop.Sparsifier`, then after each
`optimizer.step()` call `sparsifier.step()`. Everything a resume needs (model, optimizer,
sparsifier, loader generator, RNG, AMP scaler, epoch) is in the checkpoint written after every
epoch, and the learning rate is recomputed from the step, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import itop
from itop.data import DataError, load_dataset, make_loaders
from itop.data.registry import is_tabular_path
from itop.sparse import native
from itop.sparse.base import SparseWeights
from itop.sparse.free_cores import optimizer_threads

from . import fsdp
from .best_sparse import load_sparse_model, sparse_export_state  # noqa: F401 - itop.train.loop.load_sparse_model, as documented before
from .checkpoint import BEST_SPARSE, CHECKPOINT, RESUME_ADVICE, RunError, load_checkpoint, save_checkpoint
from .config import TrainConfig, UsageError, result_settings
from .distributed import RankSlice, World, all_sum, barrier, pick_device
from .evaluation import evaluate, layer_densities
from .fused_step import FusedStep
from .metrics import MetricsLog, NullLog, epoch_line
from .model_setup import build_model, build_sparsifier, loss_function, uncut_note
from .notices import MIN_VALIDATION, no_update_warning
from .optim import build_optimizer, learning_rate, set_learning_rate
from .tensorboard import Logs, TensorBoardLog
from .threads import step_threads, threads_note, using_threads

# ImageNet runs (--arch, a data directory) cannot switch data with --data alone: name a whole command.
IMAGENET_HINT = "or train on the 5,000 MNIST digits that come with itop: itop train --model lenet5 --data mnist5k"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Run:
    """A training run bound to its directory; `fit()` trains, `summary()` reports."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, world: World = World()):
        self.cfg, self.dir, self.world = cfg, Path(run_dir), world
        self.device = pick_device(cfg, world)
        self.notes: list[str] = []  # things the user should know about this run, printed at its start
        self.warnings: list[str] = []  # settings that defeat the run's purpose, printed to stderr at its start
        if (cfg.batch_size * cfg.processes) % world.size:
            raise RunError(
                f"the run's global batch of {cfg.batch_size * cfg.processes} ({cfg.processes} process(es) x {cfg.batch_size}) "
                f"cannot be split over {world.size} processes; resume it with a process count that divides it."
            )
        self.batch_size = cfg.batch_size * cfg.processes // world.size  # per process: the global batch stays the same
        torch.manual_seed(cfg.seed)
        try:
            self.data = self._load_data()
            self.model, self.target_density = self._build_model()
            self.model = self.model.to(self.device)
        except DataError:
            raise
        except ValueError as error:  # a valid flag that this dataset cannot take (split size, input size)
            raise UsageError(str(error).splitlines()[0]) from None
        if cfg.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward_model = self.model
        if cfg.fsdp:  # FSDP2: every rank holds its shard of each weight; fully_shard turns the model itself into the wrapper
            self.flops = self._count_flops()  # on the whole model, before sharding
            self.model = self.forward_model = fsdp.shard_model(self.model, self.device)
        elif world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(cfg, self.model)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = self.steps_per_epoch * cfg.total_epochs
        init_batch = self._first_batch() if cfg.init else None
        self.sparsifier = build_sparsifier(
            cfg, self.model, self.optimizer, self.total_steps, self.steps_per_epoch, self.target_density, init_batch
        )
        if cfg.gradual:
            self.notes.append("--gradual: only epochs that end at the final density can be reported as the best.")
        if self.sparsifier is not None:
            warning = no_update_warning(cfg, self.steps_per_epoch, self.total_steps, self.sparsifier.schedule.update_frequency)
            self.warnings += [warning] if warning else []
            self.notes += [note for note in [uncut_note(cfg, self.model)] if note]
        if self.device.type == "cpu":  # the kernels' one-time loading, here rather than in the first epoch's time
            for dtype in {m.values.dtype for m in self.model.modules() if isinstance(m, SparseWeights)}:
                native.prepare(dtype)
        self.threads = step_threads(self.model, self.batch_size, self.device)
        self.notes += [threads_note(self.threads, self.model, self.batch_size)] if self.threads else []
        self.selects_best = self._validation_size() >= MIN_VALIDATION  # else the final epoch is reported
        if self.val_loader is not None and not self.selects_best:
            self.notes.append(self._small_validation_note())
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        fp16 = cfg.amp == "fp16"
        self.scaler = fsdp.grad_scaler(self.device, fp16) if cfg.fsdp else torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.loss_fn, self.loss_sum_fn = loss_function(cfg), loss_function(cfg, reduction="sum")
        small_steps = self.device.type == "cpu" and world.size == 1 and not cfg.fsdp and self.batch_size <= FusedStep.MAX_BATCH
        self.fused_step = FusedStep.for_model(self.model, cfg.loss, cfg.label_smoothing, cfg.amp, cfg.l1) if small_steps else None
        if self.fused_step is not None and native.AVAILABLE:
            self.fused_step.prepare()
        self.epoch, self.step, self.best_val, self.best_epoch = 0, 0, -1.0, 0
        self.best_state = self.model.state_dict()
        self.seconds = 0.0
        if resume:
            self._restore(self._load_sharded() if cfg.fsdp else load_checkpoint(self.dir / CHECKPOINT))
        self.resumed = resume
        self.metrics = NullLog()  # opened by fit(), so that building a run writes nothing
        if not cfg.fsdp:
            self.flops = self._count_flops()

    def _count_flops(self):
        example = next(iter(self.test_loader))[0][:1].to(self.device)
        self.model.eval()
        return itop.flops.count_flops(self.model, example)

    # ------------------------------------------------------------------------------------ setup
    def _load_data(self):
        cfg = self.cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.imagenet:
            from itop.data.imagenet import make_imagenet_loader

            if not cfg.data_dir:
                raise RunError(
                    f"ImageNet needs its directory: itop train ... /path/to/imagenet (with train/ and val/ inside); {IMAGENET_HINT}."
                )
            for split in ("train", "val"):
                if not (Path(cfg.data_dir) / split).is_dir():
                    raise DataError(
                        f"ImageNet directory {Path(cfg.data_dir) / split} not found: pass the ImageNet root, which holds "
                        f"train/ and val/ with one folder of images per class; {IMAGENET_HINT}."
                    )
            shared = dict(
                workers=cfg.workers,
                device=self.device,
                seed=cfg.seed,
                distributed=self.world.size > 1,
                num_replicas=self.world.size,
                rank=self.world.rank,
            )
            self.train_loader = make_imagenet_loader(cfg.data_dir, "train", self.batch_size, **shared)
            self.test_loader = make_imagenet_loader(cfg.data_dir, "val", cfg.test_batch_size, **shared)
            self.val_loader = self.test_loader  # the ImageNet recipe selects on its validation set
            return None
        tabular = {"test_split": cfg.test_split} if is_tabular_path(cfg.data) else {}
        splits = load_dataset(cfg.data, cfg.data_dir, valid_split=cfg.valid_split, seed=cfg.seed, **tabular)
        size, global_batch = self.world.size, cfg.batch_size * cfg.processes
        self.train_loader, self.val_loader, self.test_loader = make_loaders(
            splits, global_batch, generator=self.generator, device=self.device, eval_batch_size=cfg.test_batch_size
        )
        if size > 1:
            self.train_loader = RankSlice(self.train_loader, self.world)
            if self.train_loader.dropped_last:
                self.notes.append(
                    f"each epoch drops its last {len(splits.train) % global_batch} training examples (fewer than two "
                    f"per process); a 1-process run would keep them."
                )
        return splits

    def _first_batch(self) -> tuple:
        """A global batch of training examples for --init snip / grasp, drawn without moving the
        run's data order on (the loader's generator is put back)."""
        loader = self.train_loader.loader if isinstance(self.train_loader, RankSlice) else self.train_loader
        state = self.generator.get_state()
        x, y = next(iter(loader))
        self.generator.set_state(state)
        return x.to(self.device), y.to(self.device)

    def _validation_size(self) -> int:
        """Examples the best epoch is picked on (0 without a validation split)."""
        if self.val_loader is None:
            return 0
        if self.data is None:  # ImageNet: its val directory (all of it, under DDP too)
            dataset = self.val_loader.loader.dataset
            return len(getattr(dataset, "dataset", dataset))
        return 0 if self.data.val is None else len(self.data.val)

    def _small_validation_note(self) -> str:
        size = self._validation_size()
        if self.cfg.imagenet:
            return (
                f"the val directory's {size} images are too few (under {MIN_VALIDATION}) to pick the best epoch; reporting the final epoch."
            )
        return (
            f"validation split of {size} examples is too small (under {MIN_VALIDATION}) to pick the best epoch; "
            "reporting the final epoch (use --valid_split to enlarge it)."
        )

    def _build_model(self) -> tuple[nn.Module, float]:
        """(model, the density its sparse layers start at): see `model_setup.build_model`."""
        if self.data is None:  # ImageNet: as many classes as class folders
            return build_model(self.cfg, num_classes=len(self.train_loader.loader.dataset.classes))
        return build_model(self.cfg, num_classes=self.data.num_classes, in_channels=self.data.in_channels, image_size=self.data.image_size)

    # ------------------------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            **self._run_state(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sparsifier": None if self.sparsifier is None else self.sparsifier.state_dict(),
        }

    def _run_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the model, optimizer and Sparsifier."""
        return {
            "format": 1,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "seconds": self.seconds,
        }

    def _load_sharded(self) -> dict[str, Any]:
        """--fsdp: model, optimizer and Sparsifier loaded into their shards from the checkpoint
        directory; returns the rest of the checkpoint, with the Sparsifier's state to restore."""
        path = self.dir / fsdp.CHECKPOINT_DIR
        if not path.exists() and not path.with_name(path.name + ".old").exists():
            raise RunError(f"no checkpoint at {path}; {RESUME_ADVICE}.")
        return fsdp.load_run(path, self.model, self.optimizer, self.sparsifier, self._run_state())

    def _current_state(self) -> dict[str, Any]:
        """A copy of the model's weights (under --fsdp, of this rank's shards), kept as the best so far."""
        if self.cfg.fsdp:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def _restore(self, state: dict[str, Any]) -> None:
        if result_settings(state["config"]) != self.cfg.results_dict():
            raise RunError(f"checkpoint in {self.dir} was written by another configuration than its config.json; start a new run instead.")
        try:
            if not self.cfg.fsdp:  # --fsdp: `_load_sharded` has loaded them into their shards
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise RunError(
                f"checkpoint in {self.dir} does not fit this model ({str(error).splitlines()[0][:120]}); start a new run."
            ) from None
        if self.sparsifier is not None:
            try:  # also checks that the weights just loaded are the ones the sparse state was saved with
                self.sparsifier.load_state_dict(state["sparsifier"])
            except (ValueError, KeyError, TypeError) as error:
                raise RunError(f"checkpoint in {self.dir} cannot be resumed: {str(error).splitlines()[0]}") from None
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        best = self.dir / ("best" if self.cfg.fsdp else "best.pt")  # rank 0's file; another node without it keeps the current weights
        advice = f"delete {best} and resume again (the best model so far then restarts from this checkpoint)"
        if self.cfg.fsdp:
            self.best_state = fsdp.load_best(best, self.model) if best.exists() else self._current_state()
        else:
            self.best_state = load_checkpoint(best, advice)["model"] if best.exists() else self.model.state_dict()
        self.best_val, self.best_epoch, self.seconds = state["best_val"], state["best_epoch"], state["seconds"]

    # ------------------------------------------------------------------------------------ training
    def train_epoch(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        set_epoch = getattr(self.train_loader, "set_epoch", None)
        if set_epoch:
            set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {self.epoch + 1}/{cfg.total_epochs}",
            # None: shown on a terminal only, so logs piped to a file stay one line per epoch
            disable=None if cfg.progress and self.world.main else True,
            leave=False,
            dynamic_ncols=True,
        )
        for batch, (x, y) in enumerate(self.train_loader):
            step_loss, hits = self.train_step(x, y)
            loss_sum += step_loss
            correct += hits
            seen += len(y)
            sp = self.sparsifier
            updating = sp is not None and sp.update_due
            logging = (batch + 1) % cfg.log_interval == 0 or batch + 1 == self.steps_per_epoch
            if logging or updating:  # host syncs only here: a topology update never runs on diverged weights
                mean_loss = float(loss_sum) / seen
                if self.world.size > 1:  # every rank must stop together, even if one alone saw the bad batch
                    mean_loss += 0.0 * all_sum([mean_loss], self.world, self.device)[0]
                if not math.isfinite(mean_loss):
                    bar.close()
                    raise TrainingDiverged(self._divergence(mean_loss))
                if logging:
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    self.metrics.running_loss(self.step, mean_loss, self.optimizer.param_groups[0]["lr"])
            if sp is not None and sp.step():
                self._log_update()
            bar.update()
        bar.close()
        loss_total, correct_total, seen_total = all_sum([float(loss_sum), float(correct), float(seen)], self.world, self.device)
        return {"train_loss": loss_total / seen_total, "train_acc": correct_total / seen_total}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | int]:
        """One optimizer step on the batch (x, y), the topology update aside (`sparsifier.step()`,
        called by `train_epoch`): the batch's summed loss and its correct predictions, as tensors
        where reading them would wait for the device."""
        cfg = self.cfg
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        set_learning_rate(self.optimizer, learning_rate(cfg, self.epoch, self.step, self.total_steps))
        fused = self.fused_step is not None and self.fused_step.ready(x)
        if not fused:  # the one-call step writes every gradient whole: nothing to clear
            self.optimizer.zero_grad(set_to_none=True)
        if cfg.channels_last and x.dim() == 4 and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if fused:  # forward, loss and backward in one call
            step_loss, hits = self.fused_step(x, y)
            loss_sum, correct = step_loss * len(y), hits
        else:
            with self.autocast():
                logits = self.forward_model(x)
                loss = self.loss_fn(logits.float(), y)
            weight = getattr(self.train_loader, "loss_weight", 1.0)  # a rank's share of a partial global batch
            objective = loss if weight == 1.0 else loss * weight
            if cfg.l1 and self.sparsifier is not None:
                objective = objective + cfg.l1 * sum(p.abs().sum() for p in self.sparsifier.params.values())
            self.scaler.scale(objective).backward()
            loss_sum, correct = loss.detach() * len(y), (logits.argmax(1) == y).sum()
        with optimizer_threads(self.device):  # on the free cores while other processes keep some busy
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return loss_sum, correct

    def _divergence(self, loss: float) -> str:
        """What happened and what to do, for a loss that is no longer finite."""
        kept = (
            f"the last good checkpoint {self.dir / CHECKPOINT} (epoch {self.epoch}) is kept"
            if self.epoch
            else "no epoch had finished, so there is no checkpoint"
        )
        fix = "lower --lr" + (" or train without --amp" if self.cfg.amp != "none" else "")
        return f"the loss became {loss} in epoch {self.epoch + 1} (step {self.step}); {kept}; {fix}."

    def _evaluate(self, loader) -> tuple[float, float]:
        """Small datasets: every rank evaluates all of it; ImageNet: a shard each, summed."""
        return evaluate(
            self.model,
            loader,
            self.device,
            self.autocast,
            self.world,
            sharded=self.cfg.imagenet and self.world.size > 1,
            loss_sum_fn=self.loss_sum_fn,
        )

    def _log_update(self) -> None:
        sp = self.sparsifier
        last, stats = sp.history[-1], sp.layer_stats()
        self.metrics.write(
            {
                "kind": "update",
                "step": self.step,
                "density": sp.density,
                "itop_rate": sp.itop_rate,
                "prune_rate": last["prune_rate"],
                "removed": last["removed"],
                "layer_density": {n: s["density"] for n, s in stats.items()},
                "layer_explored": {n: s["explored"] for n, s in stats.items()},
            }
        )

    def fit(self) -> None:
        cfg = self.cfg
        if self.world.main:
            resumed_at = self.step if self.resumed else None
            logs = [MetricsLog(self.dir / "metrics.jsonl", keep_until_step=resumed_at)]
            if cfg.tensorboard:
                logs.append(TensorBoardLog(self.dir, purge_after=resumed_at))
            self.metrics = Logs(*logs)
        while self.epoch < cfg.total_epochs:
            start = time.perf_counter()
            with using_threads(self.threads):
                record = self.train_epoch()
                val_acc = self._evaluate(self.val_loader)[1] if self.val_loader else None
            self.epoch += 1
            self.seconds += time.perf_counter() - start
            record = {
                "kind": "epoch",
                "epoch": self.epoch,
                "step": self.step,
                **record,
                "val_acc": val_acc,
                "lr": self.optimizer.param_groups[0]["lr"],
                "density": self.density,
                "itop_rate": self.itop_rate,
                "seconds": time.perf_counter() - start,
                "layer_density": layer_densities(self.sparsifier),
            }
            self.metrics.write(record)
            if self.world.main:
                print(epoch_line(record, cfg.total_epochs), flush=True)
            final = self.sparsifier is None or self.sparsifier.at_final_density  # gradual pruning: only models at the final density count
            if final and (not self.selects_best or val_acc > self.best_val):  # no usable validation split: the last epoch is reported
                self.best_val, self.best_epoch = (-1.0 if val_acc is None else val_acc), self.epoch
                self.best_state = self._current_state()
                if cfg.fsdp:  # every rank writes its shards
                    fsdp.save_best(self.dir / fsdp.BEST_DIR, self.model)
                elif self.world.main:
                    save_checkpoint({"format": 1, "model": self.best_state, "epoch": self.epoch}, self.dir / "best.pt")
                    if self.sparsifier is not None and not self.cfg.truly_sparse:  # truly sparse: best.pt is stored sparse already
                        save_checkpoint(sparse_export_state(self.model, self.sparsifier, self.epoch), self.dir / BEST_SPARSE)
            if cfg.fsdp:
                fsdp.save_run(self.dir / fsdp.CHECKPOINT_DIR, self.model, self.optimizer, self.sparsifier, self._run_state())
            elif self.world.main:
                save_checkpoint(self._state(), self.dir / "checkpoint.pt")
            barrier(self.world)
        self.metrics.close()

    # ------------------------------------------------------------------------------------ results
    @property
    def density(self) -> float:
        return 1.0 if self.sparsifier is None else self.sparsifier.density

    @property
    def itop_rate(self) -> float:
        return 1.0 if self.sparsifier is None else self.sparsifier.itop_rate

    def summary(self) -> dict[str, Any]:
        """Test accuracy of the reported model (the best epoch by validation, the original's rule, or
        the final epoch without a validation split of MIN_VALIDATION examples; `reported` says which)
        and of the final epoch, Rs, and FLOPs relative to dense (training FLOPs: to a dense run of
        --epochs at --multiplier 1)."""
        final_loss, final_acc = self._evaluate(self.test_loader)  # the last epoch's model, as it stands
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.best_state)
        test_loss, test_acc = self._evaluate(self.test_loader)
        self.model.load_state_dict(current)
        sp = self.sparsifier
        dense_forward = self.flops.total
        # The convention of the original ITOP code's README for extended runs: training FLOPs relative
        # to a 1x dense run ("RigL-ITOP (2 times)" 0.84x = 2 x 0.42x), so a run m times as long costs
        # m times its ratio.
        m = self.cfg.multiplier
        dense_1x = 3 * dense_forward * self.cfg.batch_size * self.cfg.processes * self.total_steps / m
        return {
            "method": self.cfg.method,
            "model": self.cfg.model,
            "data": self.cfg.data,
            "density": self.density,
            "sparsity": 1 - self.density,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "final_test_acc": final_acc,
            "final_test_loss": final_loss,
            "best_val_acc": self.best_val if self.val_loader else None,
            "best_epoch": self.best_epoch,
            "reported": "best" if self.selects_best else "final",
            "itop_rate": self.itop_rate,
            "training_flops": float(m) if sp is None else m * itop.flops.training_ratio(self.flops, sp, self.total_steps),
            "test_flops": 1.0 if sp is None else itop.flops.inference_ratio(self.flops, layer_densities(sp)),
            "dense_training_flops": float(dense_1x),
            "dense_test_flops": float(dense_forward),
            "epochs": self.cfg.epochs,
            "multiplier": self.cfg.multiplier,
            "steps": self.step,
            "seconds": self.seconds,
            **self._file_sizes(),
        }

    def _file_sizes(self) -> dict[str, int]:
        """Bytes on disk of best_sparse.pt and best.pt, for a masked sparse run whose rank 0 wrote them."""
        sparse, dense = self.dir / BEST_SPARSE, self.dir / "best.pt"
        if self.sparsifier is None or not (sparse.is_file() and dense.is_file()):
            return {}
        return {"best_sparse_bytes": sparse.stat().st_size, "best_dense_bytes": dense.stat().st_size}
