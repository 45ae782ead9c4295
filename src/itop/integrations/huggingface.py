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
- The Sparsifier's hooks on the optimizer see each real step: one per accumulated batch, none for a
  step the fp16 GradScaler skips. RigL reads the accumulated gradients, unscaled, before the step.
- `on_save` writes `itop_sparsifier.pt` (atomically, on the main process) into the checkpoint folder.
- `on_log` adds sparsity/density, sparsity/itop_rate (Rs) and sparsity/prune_rate to the Trainer's
  logs (log_history, trainer_state.json, the progress bar and every `report_to` integration: the
  callback puts itself first among the Trainer's callbacks so that the reporters see them).
- Under DDP (torchrun) every rank builds the same masks (the seed is shared) and the Sparsifier checks
  after each update that they agree. DeepSpeed and FSDP shard or flatten the weights the masks cover,
  so the callback refuses them when the Trainer is made.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler

from ..train.checkpoint import save_checkpoint
from .engine import (SPARSIFIER_FILE, build_sparsifier, checked_options, layer_densities, logged_figures, read_state,
                     torch_optimizer)

__all__ = ["SparsityCallback"]


class SparsityCallback(TrainerCallback):
    """Keeps a `transformers.Trainer`'s model sparse with a `Sparsifier(**options)`.

    `options` are any `itop.Sparsifier` arguments but the model and optimizer (the Trainer's);
    total_steps defaults to the Trainer's `max_steps`. `resume_from` names a checkpoint folder (or an
    `itop_sparsifier.pt`) when the one being resumed is not `<output_dir>/checkpoint-<step>`.
    `log_layers=True` adds each sparse layer's density and explored share to the logs and, with
    report_to="tensorboard", a histogram of the layer densities at each topology update.
    """

    def __init__(self, *, resume_from: str | Path | None = None, log_layers: bool = False, **options: Any):
        self.options = checked_options(options)
        self.resume_from, self.log_layers = resume_from, log_layers
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
        saved = self._saved_state(args, state) if state.global_step > 0 else None
        self.sparsifier = build_sparsifier(model, torch_optimizer(optimizer), self.options, state.max_steps, saved)

    def _saved_state(self, args, state) -> dict[str, Any]:
        """The Sparsifier state saved with the checkpoint being resumed (at `state.global_step`)."""
        step = state.global_step
        candidates = [Path(self.resume_from)] if self.resume_from else []
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            candidates.append(Path(args.resume_from_checkpoint))
        candidates.append(Path(args.output_dir) / f"checkpoint-{step}")
        for candidate in candidates:
            path = candidate if candidate.is_file() else candidate / SPARSIFIER_FILE
            if path.is_file():
                saved = read_state(path)
                if saved.get("global_step") != step:
                    raise ValueError(f"{path} was saved at step {saved.get('global_step')} but the Trainer resumes at step {step}; "
                                     "pass SparsityCallback(resume_from=...) the checkpoint folder being resumed.")
                return saved["sparsifier"]
        raise ValueError(f"the Trainer resumes at step {step} but no {SPARSIFIER_FILE} was found in "
                         f"{', '.join(str(c) for c in candidates)}; pass SparsityCallback(resume_from=...) the checkpoint "
                         "folder being resumed (one saved by a run with SparsityCallback).")

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
        if self.sparsifier is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        save_checkpoint({"global_step": state.global_step, "sparsifier": self.sparsifier.state_dict()}, folder / SPARSIFIER_FILE)


def refuse_sharded(args) -> None:
    """A one-line ValueError when the Trainer is set to DeepSpeed or FSDP, which shard or flatten the
    weights the masks cover (the Sparsifier would mask the wrong tensors)."""
    strategy = None
    if getattr(args, "deepspeed", None):
        strategy = "DeepSpeed"
    elif getattr(args, "fsdp", None):
        strategy = "FSDP"
    else:
        try:
            from accelerate.state import AcceleratorState

            shared = AcceleratorState._shared_state
            if shared.get("deepspeed_plugin") is not None:
                strategy = "DeepSpeed"
            elif shared.get("fsdp_plugin") is not None:
                strategy = "FSDP"
        except ImportError:  # accelerate is a dependency of the Trainer; without it no sharding either
            pass
    if strategy:
        raise ValueError(f"SparsityCallback cannot train under {strategy}: it shards or flattens the weights the masks cover; "
                         "use plain DDP (torchrun without --deepspeed / --fsdp).")
