"""itop.allocator: glibc keeps freed memory, so a large tensor made again reuses mapped pages."""

import subprocess
import sys

import pytest

from itop import allocator

# Fills a fresh 64 MB tensor eleven times and prints the page faults of the last eight (the heap
# grows over the first ones).
FAULTS = """
import resource, sys, torch
from itop.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    keep_freed_memory()
for _ in range(3):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.empty(16 << 20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(way: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS, way], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip())


@pytest.mark.skipif(not allocator.GLIBC, reason="glibc's malloc only")
def test_a_tensor_made_again_reuses_the_pages_of_the_one_freed():
    pages = (64 << 20) // 4096
    assert page_faults("glibc") >= 7 * pages  # glibc's defaults: each new 64 MB tensor is mapped and faulted in afresh
    assert page_faults("kept") <= pages  # the pages stay mapped (the heap may still grow once)


@pytest.mark.skipif(not allocator.GLIBC, reason="glibc's malloc only")
def test_it_applies_on_glibc_and_says_so(monkeypatch):
    for name in (*allocator.USER_SETTINGS, "ITOP_MALLOC"):
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() == allocator.KEPT == allocator.status()


@pytest.mark.parametrize("name", ["ITOP_MALLOC", *allocator.USER_SETTINGS])
def test_the_user_s_own_settings_win(monkeypatch, name):
    monkeypatch.setenv(name, "default" if name == "ITOP_MALLOC" else "65536")
    assert name in allocator.keep_freed_memory()
    assert name in allocator.status()
