"""Dynamic sparse training in the Hugging Face `transformers.Trainer`.

    from itop.integrations.huggingface import SparsityCallback
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[SparsityCallback(density=0.1, grow="gradient", update_frequency=100)])
    trainer.train()                                   # or trainer.train(resume_from_checkpoint=True)

How it fits the Trainer:
- `on_train_begin` builds the `Sparsifier` (then `callback.sparsifier`) on the unwrapped model and the
  torch optimizer inside accelerate's wrapper, over `state.max_steps` optimizer steps. The model and
  optimizer are loaded from the checkpoint by then when resuming; the Sparsifier takes its saved state
  from `itop_sparsifier.pt` beside them and continues with the same masks, Rs, schedule and generator.
- Before continuing, it checks that the model holds the checkpoint's weights (weights outside the
  saved masks exactly zero, the active weights' fingerprint as saved). transformers 5 saves some
  models (ViT among them) under other parameter names than the model's, and its Trainer's resume
  does not rename them back, so it leaves the model at its initial weights with only a warning; the
  callback then reloads the folder with the model class's `from_pretrained`, which does rename them,
  and refuses in one line when the weights still do not match.
- A run resumed with another length (num_train_epochs or max_steps raised) decays the prune rate
  over the new length (`horizon="stretch"`, the default) or over the saved run's (`"keep"`).
- The Sparsifier's hooks on the optimizer see each real step: one per accumulated batch, none for a
  step the fp16 GradScaler skips. RigL reads the accumulated gradients, unscaled, before the step.
- `on_save` writes `itop_sparsifier.pt` (atomically, on the main process) into the checkpoint folder.
- `on_log` adds sparsity/density, sparsity/itop_rate (Rs) and sparsity/prune_rate to the Trainer's
  logs (log_history, trainer_state.json, the progress bar and every `report_to` integration: the
  callback puts itself first among the Trainer's callbacks so that the reporters see them).
- Under DDP (torchrun) every rank builds the same masks (all share the random seed) and the Sparsifier checks
  after each update that they agree.
- Under accelerate's FSDP2 (`TrainingArguments(fsdp=True, fsdp_config={"fsdp_version": 2})`, or
  `fsdp_version: 2` in an accelerate config) the Trainer shards the model with `fully_shard` and moves
  the optimizer onto the sharded parameters before `on_train_begin`, so the Sparsifier is built on
  the DTensor weights: each rank keeps the masks of its own rows, and every rank takes the decisions
  one process would. `on_save` then writes the Sparsifier's state with torch.distributed.checkpoint,
  every rank its own shards, into an `itop_sparsifier/` directory in the checkpoint folder (renamed
  into place once all ranks have written), and a resumed run reads it back on every rank. The weights
  check above applies, without the `from_pretrained` reload: under FSDP the Trainer loads the
  sharded weights itself.
- DeepSpeed and FSDP1 flatten the weights the masks cover into sharded vectors, so the callback
  refuses them when the Trainer is made, in one line that names FSDP2 as the way to shard.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler

from ..sparsity.fingerprint import weights_in_model, weights_problem
from ..sparsity.shards import is_sharded
from ..train.checkpoint import save_checkpoint
from .engine import (
    SHARDED_SPARSIFIER_DIR,
    SPARSIFIER_FILE,
    build_sparsifier,
    build_sparsifier_sharded,
    checked_horizon,
    checked_options,
    layer_densities,
    logged_figures,
    logger,
    read_state,
    torch_optimizer,
)

__all__ = ["SparsityCallback"]


class SparsityCallback(TrainerCallback):
    """Keeps a `transformers.Trainer`'s model sparse with a `Sparsifier(**options)`.

        sparsity = SparsityCallback(density=0.2, grow="gradient", update_frequency=20)  # RigL
        trainer = Trainer(model=model, args=args, callbacks=[sparsity], ...)
        trainer.train()
        print(sparsity.sparsifier.density, sparsity.sparsifier.itop_rate)

    Args:
        resume_from: a checkpoint folder (or an `itop_sparsifier.pt`, or the `itop_sparsifier/` directory of an
            FSDP2 run) to resume the sparse state from, when the one being resumed is not `<output_dir>/checkpoint-<step>`.
        log_layers: True adds each sparse layer's density and explored share to the logs and, with
            report_to="tensorboard", a histogram of the layer densities at each topology update.
        horizon: applies when a run is resumed with another length (num_train_epochs raised):
            "stretch" decays the prune rate over the new length, "keep" over the saved run's.
        **options: any `itop.Sparsifier` arguments but the model and optimizer (the Trainer's);
            total_steps defaults to the Trainer's `max_steps`.

    Attributes:
        sparsifier: the `itop.Sparsifier`, built when training begins (None before).
    """

    def __init__(self, *, resume_from: str | Path | None = None, log_layers: bool = False, horizon: str = "stretch", **options: Any):
        self.options = checked_options(options)
        self.resume_from, self.log_layers, self.horizon = resume_from, log_layers, checked_horizon(horizon)
        self.sparsifier = None
        self._handler: CallbackHandler | None = None
        self._updated = False

    # ------------------------------------------------------------------ set-up
    def on_init_end(self, args, state, control, **kwargs):
        refuse_sharded(args)
        self._go_first()

    def _go_first(self) -> None:
        """Move to the front of the Trainer's callbacks, so that reporters added before this callback
        (TensorBoard, W&B: the Trainer puts them first) log the sparsity figures `on_log` adds. The
        handler is the caller of this event (a subclass's on_init_end may add a frame); if the Trainer
        ever calls otherwise, nothing moves and the figures reach only the reporters after this callback."""
        frame = sys._getframe(1)
        for _ in range(4):
            frame = frame.f_back
            if frame is None:
                return
            handler = frame.f_locals.get("self")
            if isinstance(handler, CallbackHandler) and self in handler.callbacks:
                handler.callbacks.remove(self)  # call_event's loop goes on at the right place: those before shift by one
                handler.callbacks.insert(0, self)
                self._handler = handler
                return

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        refuse_sharded(args)
        if self.sparsifier is not None:  # a second train() on the same Trainer: the old hooks go
            self.sparsifier.detach()
        saved = None
        if state.global_step > 0:
            folder, saved = self._saved_state(args, state, model)
            if isinstance(saved, Path):  # a sharded state (FSDP2): read into the layout of the Sparsifier being built
                self.sparsifier = resumed_sharded(
                    model, torch_optimizer(optimizer), self.options, state.max_steps, saved, self.horizon, folder
                )
                return
            restore_weights(model, saved, folder)
        self.sparsifier = build_sparsifier(model, torch_optimizer(optimizer), self.options, state.max_steps, saved, self.horizon)

    def _saved_state(self, args, state, model=None) -> tuple[Path, dict[str, Any] | Path]:
        """The checkpoint folder being resumed (at `state.global_step`) and the Sparsifier state saved in
        it: the state itself (`itop_sparsifier.pt`) or the directory of a sharded one (`itop_sparsifier/`,
        preferred when the model is sharded)."""
        step = state.global_step
        candidates = [Path(self.resume_from)] if self.resume_from else []
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            candidates.append(Path(args.resume_from_checkpoint))
        candidates.append(Path(args.output_dir) / f"checkpoint-{step}")
        sharded = model is not None and any(is_sharded(p) for p in model.parameters())
        for candidate in candidates:
            for path in saved_states(candidate, sharded):
                saved = read_state(path) if path.is_file() else {"global_step": read_sharded_step(path), "sparsifier": path}
                if saved.get("global_step") != step:
                    raise ValueError(
                        f"{path} was saved at step {saved.get('global_step')} but the Trainer resumes at step {step}; "
                        "pass SparsityCallback(resume_from=...) the checkpoint folder being resumed."
                    )
                return path.parent, saved["sparsifier"]
        raise ValueError(
            f"the Trainer resumes at step {step} but no {SPARSIFIER_FILE} (nor a sharded {SHARDED_SPARSIFIER_DIR}/) was found in "
            f"{', '.join(str(c) for c in candidates)}; pass SparsityCallback(resume_from=...) the checkpoint "
            "folder being resumed (one saved by a run with SparsityCallback)."
        )

    # ------------------------------------------------------------------ training
    def on_optimizer_step(self, args, state, control, **kwargs):
        self._updated = self.sparsifier.step()  # no-op when the GradScaler skipped the step: the hooks saw none

    def on_step_end(self, args, state, control, **kwargs):
        """With log_layers, a histogram of the layer densities after each update, in the event file of
        the Trainer's TensorBoardCallback (at global_step, which the Trainer advances after the step)."""
        if self._updated and self.log_layers and state.is_world_process_zero and self._handler is not None:
            for reporter in self._handler.callbacks:
                writer = getattr(reporter, "tb_writer", None) if type(reporter).__name__ == "TensorBoardCallback" else None
                if writer is not None:
                    writer.add_histogram("train/sparsity/layer_densities", layer_densities(self.sparsifier), state.global_step)
        self._updated = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.sparsifier is None or logs is None or not any(k == "loss" or k.startswith("train_") for k in logs):
            return  # evaluation logs keep their own keys
        figures = logged_figures(self.sparsifier, self.log_layers)
        logs.update(figures)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)  # the Trainer stored a copy before calling on_log

    def on_save(self, args, state, control, **kwargs):
        if self.sparsifier is None:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if any(is_sharded(mask) for mask in self.sparsifier.masks.values()):  # FSDP2: every rank writes its shards
            from ..sharded_checkpoint import save_atomically, sparsifier_entries

            entries = {"global_step": state.global_step, "sparsifier": sparsifier_entries(self.sparsifier)}
            save_atomically(entries, folder / SHARDED_SPARSIFIER_DIR)
            return
        if not state.is_world_process_zero:
            return
        save_checkpoint({"global_step": state.global_step, "sparsifier": self.sparsifier.state_dict()}, folder / SPARSIFIER_FILE)


@torch.no_grad()
def restore_weights(model, saved: dict[str, Any], folder: Path) -> None:
    """Make sure `model` holds the weights the saved sparse state belongs to. When the Trainer's resume
    left other weights (transformers 5 saves some models under renamed parameters and its resume
    skips the renaming back), reload `folder` with the model class's `from_pretrained`; a one-line
    ValueError when that is impossible or does not help."""
    problem = weights_problem(weights_in_model(model, saved), saved)
    if problem is None:
        return
    sharded = any(is_sharded(p) for p in model.parameters())  # FSDP loads its own checkpoint; no whole-model reload
    if not sharded and callable(getattr(model, "from_pretrained", None)) and (folder / "config.json").is_file():
        reloaded = type(model).from_pretrained(folder)
        model.load_state_dict(reloaded.state_dict())
        del reloaded
        problem = weights_problem(weights_in_model(model, saved), saved)
        if problem is None:
            logger.warning(
                f"itop: the Trainer did not restore the model's weights from {folder} (its resume does not undo "
                f"the parameter renaming of save_pretrained); SparsityCallback reloaded them with "
                f"{type(model).__name__}.from_pretrained."
            )
            return
    raise weights_refusal(folder, problem)


def weights_refusal(folder: Path, problem: str) -> ValueError:
    return ValueError(
        f"the Trainer did not restore the model's weights from {folder} ({problem}), so the run would continue "
        "from other weights than the saved run's; check that the folder holds this model's checkpoint, or "
        "load its weights into the model before trainer.train(resume_from_checkpoint=...)."
    )


def saved_states(candidate: Path, sharded: bool) -> list[Path]:
    """Where a Sparsifier state may lie for `candidate` (a checkpoint folder, an `itop_sparsifier.pt`
    or an `itop_sparsifier/` directory), the sharded directory first when the model is sharded."""
    if candidate.is_file() or (candidate / ".metadata").is_file():
        return [candidate]
    directory = candidate / SHARDED_SPARSIFIER_DIR
    found = [directory] if directory.is_dir() or (directory.with_name(directory.name + ".old") / ".metadata").is_file() else []
    file = [candidate / SPARSIFIER_FILE] if (candidate / SPARSIFIER_FILE).is_file() else []
    return found + file if sharded else file + found


def read_sharded_step(directory: Path) -> int | None:
    """The Trainer step a sharded Sparsifier state was saved at (read on every rank)."""
    from ..sharded_checkpoint import load_safely

    entries = {"global_step": -1}
    load_safely(entries, directory)
    return entries["global_step"]


def resumed_sharded(model, optimizer, options, total_steps: int, directory: Path, horizon: str, folder: Path):
    """The Sparsifier continuing from the sharded state in `directory`, on every rank, over the weights
    and optimizer state the Trainer loaded; the callback's one-line refusal when those weights are not
    the saved run's."""
    loaded: dict[str, Any] = {}
    try:
        return build_sparsifier_sharded(model, optimizer, options, total_steps, directory, horizon, loaded)
    except ValueError as error:
        problem = weights_problem(weights_in_model(model, loaded), loaded) if "masks" in loaded else None
        if problem is not None:
            raise weights_refusal(folder, problem) from error
        raise


def sharding(args) -> str | None:
    """The sharding the Trainer is set to: "DeepSpeed", "FSDP1", "FSDP2" or None. TrainingArguments
    (deepspeed, fsdp and fsdp_config) come first; without them, an accelerate config (a launch config,
    ACCELERATE_USE_FSDP) that made the Trainer's Accelerator. transformers before its FSDP2 support
    knows only FSDP1."""
    plugins = accelerate_plugins()
    if getattr(args, "deepspeed", None):
        return "DeepSpeed"
    if getattr(args, "fsdp", None):
        version = (getattr(args, "fsdp_plugin_args", None) or {}).get("fsdp_version")
        config = getattr(args, "fsdp_config", None)
        if version is None and isinstance(config, dict):
            version = config.get("version", config.get("fsdp_version"))
        if version is None and plugins.get("fsdp_plugin") is not None:
            version = getattr(plugins["fsdp_plugin"], "fsdp_version", None)
        return f"FSDP{int(version or 1)}"
    if plugins.get("deepspeed_plugin") is not None:
        return "DeepSpeed"
    if plugins.get("fsdp_plugin") is not None:
        return f"FSDP{int(getattr(plugins['fsdp_plugin'], 'fsdp_version', None) or 1)}"
    return None


def accelerate_plugins() -> dict[str, Any]:
    """accelerate's shared state (its DeepSpeed and FSDP plugins), {} without accelerate."""
    try:
        from accelerate.state import AcceleratorState
    except ImportError:  # accelerate is a dependency of the Trainer; without it no sharding either
        return {}
    return AcceleratorState._shared_state


def refuse_sharded(args) -> None:
    """A one-line ValueError when the Trainer is set to DeepSpeed or FSDP1, which flatten the weights
    the masks cover into sharded vectors (the Sparsifier would mask the wrong tensors). FSDP2 passes:
    its weights are DTensors of whole layers, which the Sparsifier follows shard by shard."""
    strategy = sharding(args)
    if strategy in ("DeepSpeed", "FSDP1"):
        raise ValueError(
            f"SparsityCallback cannot train under {strategy}: it flattens the weights the masks cover into sharded vectors; "
            "set fsdp=True with fsdp_config={'fsdp_version': 2} (FSDP2, which the Sparsifier follows shard by shard) "
            "or train with plain DDP (torchrun)."
        )
