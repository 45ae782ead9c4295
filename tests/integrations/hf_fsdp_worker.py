"""One rank of a 2-process torchrun job: SparsityCallback in the Hugging Face Trainer under
accelerate's FSDP2 (run by test_huggingface_fsdp.py; on its own, on a machine with two GPUs):

    python -m torch.distributed.run --standalone --nproc_per_node 2 hf_fsdp_worker.py OUT cpu|gpu

For SET and RigL: a run of STEPS optimizer steps that saves a checkpoint at step SAVE_AT, then a run
resumed from that checkpoint (`resume_from_checkpoint`) on other initial weights. After every step
each rank checks that the inactive weights and optimizer state of its shards are exactly zero;
rank 0 writes both runs' full masks and weights, density, Rs and history to OUT/results.pt, with the
one-line refusals of a resume from the sparse state of other weights or of another step.

`gpu`: one GPU per rank (nccl), the Trainer exactly as users run it. `cpu`: gloo on CPUs. There
accelerate (1.16) turns a torchrun job with use_cpu=True into DDP and drops the FSDP plugin, so
TrainingArguments' fsdp has no effect; `CpuFsdpTrainer` puts the plugin back once the Accelerator
is made. Everything after that (accelerate's fully_shard, the optimizer moved onto the DTensor
parameters, the Trainer's sharded checkpoints and its resume) is the libraries' own FSDP2 code.
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from itop.integrations.huggingface import SparsityCallback
from itop.sparsity import shards

STEPS, SAVE_AT, DENSITY = 8, 4, 0.2
SCENARIOS = {
    "set": dict(prune="set", grow="random"),
    "rigl": dict(prune="magnitude", grow="gradient"),
}


def tiny_llama(seed=0):
    """A two-layer Llama classifier built from a config (no download). accelerate's FSDP2 wraps each
    decoder layer, the embedding and the root in units of their own."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        num_labels=2,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(config)


def examples(n=64):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, 64, (12,), generator=g), "labels": i % 2} for i in range(n)]


def arguments(out, device, **changes):
    settings = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=SAVE_AT,
        logging_steps=2,
        report_to="none",
        max_grad_norm=1.0,
        weight_decay=0.1,
        learning_rate=1e-3,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        use_cpu=device == "cpu",
        ddp_backend="gloo" if device == "cpu" else None,
        fsdp=True,
        # sharded checkpoints: the Trainer's full-state-dict save of an FSDP2 model fails on CPUs
        fsdp_config={"fsdp_version": 2, "state_dict_type": "SHARDED_STATE_DICT"},
    )
    return TrainingArguments(**{**settings, **changes})


class CpuFsdpTrainer(Trainer):
    """The Trainer with accelerate's FSDP2 on CPUs: the FSDP plugin the Accelerator dropped, put back."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if getattr(state, "fsdp_plugin", None) is None:
            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True


class Checks(TrainerCallback):
    """After SparsityCallback: the steps the Sparsifier starts from, and after every step that every
    inactive weight and optimizer state entry of this rank's shards is exactly zero."""

    def __init__(self, cb):
        self.cb, self.start_steps, self.checked = cb, None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_steps = self.cb.sparsifier.steps

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        sp = self.cb.sparsifier
        inner = optimizer.optimizer
        for name, param in sp.params.items():
            assert shards.is_sharded(param) and shards.is_sharded(sp.masks[name]), name
            inactive = ~shards.local(sp.masks[name])
            assert not shards.local(param).detach()[inactive].any(), (state.global_step, name)
            for value in inner.state[param].values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    assert not shards.local(value)[inactive].any(), (state.global_step, name)
        self.checked += 1


def full(tensor):
    return tensor.full_tensor().detach().cpu() if shards.is_sharded(tensor) else tensor.detach().cpu().clone()


def train(out, device, options, resume=None, resume_from=None, **changes):
    cb = SparsityCallback(density=DENSITY, update_frequency=2, resume_from=resume_from, **options)
    checks = Checks(cb)
    kind = CpuFsdpTrainer if device == "cpu" else Trainer
    args = arguments(out, device, **changes)
    trainer = kind(model=tiny_llama(seed=5 if resume else 0), args=args, train_dataset=examples(), callbacks=[cb, checks])
    trainer.train(resume_from_checkpoint=resume)
    sp = cb.sparsifier
    return {
        "masks": {n: full(m) for n, m in sp.masks.items()},  # collectives: every rank gathers
        "model": {n: full(p) for n, p in trainer.model.named_parameters()},
        "density": sp.density,
        "itop_rate": sp.itop_rate,
        "steps": sp.steps,
        "start_steps": checks.start_steps,
        "checked_steps": checks.checked,
        "history": [h["nnz"] for h in sp.history],
        "numel": {n: m.numel() for n, m in sp.masks.items()},
    }


def main() -> None:
    out, device = Path(sys.argv[1]), sys.argv[2]
    results = {}
    for scenario, options in SCENARIOS.items():
        folder = out / scenario
        whole = train(folder, device, options)
        saved = sorted(p.name for p in (folder / f"checkpoint-{SAVE_AT}").iterdir())
        resumed = train(folder, device, options, resume=str(folder / f"checkpoint-{SAVE_AT}"))
        results[scenario] = {"whole": whole, "resumed": resumed, "checkpoint": saved}
    # Resuming the RigL run at step SAVE_AT with the sparse state of another run (other data, so other
    # weights), or of another step: refused in one line on every rank.
    train(out / "other", device, SCENARIOS["rigl"], max_steps=SAVE_AT, data_seed=1)
    refusals = {}
    for case, state in (("weights", out / "other" / f"checkpoint-{SAVE_AT}"), ("step", out / "rigl" / f"checkpoint-{STEPS}")):
        try:
            train(out / "rigl", device, SCENARIOS["rigl"], resume=str(out / "rigl" / f"checkpoint-{SAVE_AT}"), resume_from=state)
        except ValueError as error:
            refusals[case] = str(error)
    results["refusals"] = refusals
    if dist.get_rank() == 0:
        torch.save(results, out / "results.pt")
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # past the last barrier: skip gloo's teardown, which aborts now and then


if __name__ == "__main__":
    main()
