"""Dynamic sparse training inside other trainers, each an optional extra:

- `itop.integrations.huggingface.SparsityCallback` for `transformers.Trainer` (`pip install itop[huggingface]`)
- `itop.integrations.lightning.SparsityCallback` for `lightning.pytorch.Trainer` (`pip install itop[lightning]`)

`engine` holds what both share; importing this package imports neither trainer.
"""
