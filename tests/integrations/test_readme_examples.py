"""The documentation's trainer examples (docs/trainers.md), run as a user runs them (their own models,
data and resume lines), over fewer epochs: interrupted and resumed, each ends where the uninterrupted
run does or trains on."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TRAINERS = Path(__file__).resolve().parents[2] / "docs" / "trainers.md"


def readme_block(heading: str) -> str:
    """The first ```python block after docs/trainers.md's `## heading`."""
    text = TRAINERS.read_text(encoding="utf-8")
    section = text[text.index(f"## {heading}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def changed(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"the docs/trainers.md example no longer holds {old!r}"
    return code.replace(old, new)


def results(output: str) -> str:
    return re.search(r"density \d\.\d+, Rs \d\.\d+, accuracy \d\.\d+", output).group(0)


def test_the_hugging_face_example_resumed_ends_as_the_whole_run(tmp_path):
    code = changed(readme_block("Hugging Face Trainer"), "num_train_epochs=10", "num_train_epochs=2")
    code = changed(code, 'report_to="tensorboard"', 'report_to="none"')
    whole = results(run(code, tmp_path))
    checkpoints = sorted((tmp_path / "runs" / "hf-vit").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2
    shutil.rmtree(checkpoints[-1])  # the run stopped after its first epoch
    resumed = run(changed(code, "trainer.train()  #", "trainer.train(resume_from_checkpoint=True)  #"), tmp_path)
    assert "did not restore" not in resumed or "reloaded them" in resumed  # transformers' renaming is undone, never ignored
    assert results(resumed) == whole


@pytest.mark.parametrize("horizon", [None, "keep"])
def test_the_lightning_example_resumes_from_last_and_trains_longer(tmp_path, horizon):
    code = changed(readme_block("PyTorch Lightning"), "max_epochs=10", "max_epochs=1")
    code += "\nprint('steps', sparsity.sparsifier.steps, 'decay', sparsity.sparsifier.schedule.total_steps)\n"
    first = run(code, tmp_path)
    steps = int(re.search(r"steps (\d+)", first).group(1))
    assert (tmp_path / "runs" / "pl-lenet" / "checkpoints" / "last.ckpt").is_file()
    longer = changed(code, "max_epochs=1", "max_epochs=2")
    longer = changed(longer, "loader(digits.test))  #", 'loader(digits.test), ckpt_path="last")  #')
    if horizon:
        longer = changed(longer, "update_frequency=50)", f"update_frequency=50, horizon={horizon!r})")
    resumed = run(longer, tmp_path)
    assert "Restoring states from the checkpoint path" in resumed and "Traceback" not in resumed
    decay = steps if horizon == "keep" else 2 * steps
    assert f"steps {2 * steps} decay {decay}" in resumed
    assert f"the prune-rate decay now ends at step {decay}" in resumed
