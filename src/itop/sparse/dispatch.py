"""Which kernel computes each sparse product: measured on the machine at hand, remembered per machine.

The fastest way to compute a sparse product depends on the CPU (vector width, cores, caches), on
the PyTorch and numba releases and on the thread count, by more than constants measured on one
machine carry to another. So each choice is timed where it is needed: the first time a shape class
needs one, its candidates run on random data of that class (a warm-up call, then the median of a
few timed calls), and the fastest is kept, in memory and in a cache file shared by the processes of
this machine, so that the next process does not probe again.

- A shape class (`key`): (op, out_features, in_features, nnz class, batch class, dtype, threads):
  the nnz class is nnz's bit length (a factor of two in density), the batch class the next power
  of two (1 is its own), threads `torch.get_num_threads()`.
- A probe costs a few milliseconds (more on huge layers); all probes of a process share
  `PROBE_BUDGET_S`. A candidate's warm-up call is charged as long as one of its timed calls, not
  more: the rest is numba compiling or loading the kernel, seconds that its first use costs a
  process anyway (charged in full, a fresh process spent its whole budget on ResNet-18's first
  class, then took the fixed rule for the others). Classes met after that take the caller's fixed
  rule (`fallback`: the constants of `ops.py` and `itop.sparsity.kernels`), as they do off the CPU
  and while `torch.compile` traces.
- The processes of a distributed run (world size above 1) never probe: they take what the cache
  holds, else the fixed rule, so that its ranks compute alike and a rerun computes the same numbers.
- The cache: `kernels.json` in `$ITOP_CACHE_DIR`, else `$XDG_CACHE_HOME/itop`, else
  `~/.cache/itop`, one entry per machine (CPU model, ISA, torch, numba and itop versions, a digest
  of the kernels' code, usable cores, OpenMP's spin count). It is rewritten whole, merged with what another process wrote, through a temporary file
  and a rename (under a lock file where the OS has one); a missing, unreadable, corrupt or
  read-only cache costs the probes again, nothing else.
- `ITOP_KERNELS` forces one path for everything: `auto` (the default: measured), `torch`, `numba`,
  `dense`; `ITOP_SPARSE_KERNELS=torch` is the old name of `ITOP_KERNELS=torch`.

This module is the machinery (modes, classes, timing, budget, cache); the candidates live with the
products (`ops.py`) and with the masked engine (`itop.sparsity.kernels`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

MODES = ("auto", "torch", "numba", "dense")
DENSE_MAX_ELEMENTS = 1 << 24  # the dense weight is a candidate up to this size (64 MiB in float32)
PROBE_BUDGET_S = 2.0  # seconds of probing per process
PROBE_GAP_S = 5e-4  # idle time before each timed call (see time_candidates)
MIN_PROBE_WORK = 1 << 16  # multiply-adds of one product below which the fixed rule decides: tiny products are not worth a probe
CACHE_FILE = "kernels.json"
CACHE_FORMAT = 1
_LOCK_WAIT_S = 1.0  # a lock held longer (a stuck process) is passed by: the rename alone keeps the file whole


def read_mode(environ: Mapping[str, str] | None = None) -> str:
    """The kernel mode `ITOP_KERNELS` asks for (ValueError, one line, for an unknown one)."""
    environ = os.environ if environ is None else environ
    value = environ.get("ITOP_KERNELS", "")
    mode = value.strip().lower()
    if not mode:
        return "torch" if environ.get("ITOP_SPARSE_KERNELS", "").strip().lower() == "torch" else "auto"
    if mode not in MODES:
        raise ValueError(f"ITOP_KERNELS={value!r} is not a kernel choice; set it to one of {', '.join(MODES)}.")
    return mode


def size_class(n: int) -> int:
    """The batch class of n rows: the next power of two (1 is its own)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$ITOP_CACHE_DIR, else $XDG_CACHE_HOME/itop, else ~/.cache/itop (a temporary directory's
    itop-cache where no home directory is known)."""
    environ = os.environ if environ is None else environ
    try:
        if environ.get("ITOP_CACHE_DIR"):
            return Path(environ["ITOP_CACHE_DIR"]).expanduser()
        return Path(environ.get("XDG_CACHE_HOME") or Path("~/.cache")).expanduser() / "itop"
    except RuntimeError:  # expanduser without a home directory
        return Path(tempfile.gettempdir()) / "itop-cache"


def cpu_model() -> str:
    with contextlib.suppress(OSError, UnicodeError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def kernels_digest() -> str:
    """A digest of the candidates' code (the numba kernels and the products around them): a checkout
    whose kernels changed under the same version number measures afresh instead of reading choices
    timed on other code."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for name in (
        "native_kernels.py",
        "native.py",
        "ops.py",
        "conv_ops.py",
        "conv_dispatch.py",
        "conv_kernels.py",
        "conv_blocked.py",
        "conv_polyphase.py",
        "conv_windows.py",
        "blocked_kernels.py",
        "condensed_ops.py",
        "condensed_kernels.py",
        "../sparsity/kernels.py",
    ):
        with contextlib.suppress(OSError):
            digest.update((here / name).read_bytes())
    return digest.hexdigest()[:12]


def machine() -> dict[str, str | int]:
    """What a decision depends on besides its shape class: the cache keeps one entry per machine."""
    import itop

    from . import native

    native.kernels()  # settles AVAILABLE: a numba that fails to import counts as none
    return {
        "cpu": cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numba": _version("numba") if native.AVAILABLE else "none",
        "itop": str(getattr(itop, "__version__", "unknown")),
        "kernels": kernels_digest(),
        "cores": usable_cores(),
        # how long OpenMP's idle threads spin decides whether waking a pool pays (itop/openmp.py)
        "spin": os.environ.get("GOMP_SPINCOUNT", "default"),
    }


def encode(key: tuple) -> str:
    return "|".join(str(part).removeprefix("torch.") if isinstance(part, torch.dtype) else str(part) for part in key)


def decode(text: str) -> tuple | None:
    """The key `encode` wrote, or None for anything else."""
    parts = text.split("|") if isinstance(text, str) else []
    if len(parts) < 4:  # (op, sizes..., dtype, threads): four sizes for the products, more for a convolution
        return None
    dtype = getattr(torch, parts[-2], None)
    try:
        sizes = tuple(int(p) for p in parts[1:-2])
        threads = int(parts[-1])
    except ValueError:
        return None
    return (parts[0], *sizes, dtype, threads) if isinstance(dtype, torch.dtype) else None


_first_call_s = 0.0  # what `time_candidates`' warm-up calls took beyond a timed call: not charged to the probe budget


def _rounds(slowest: float) -> int:
    return 5 if slowest < 2e-3 else 3 if slowest < 50e-3 else 1


def _timed(run: Callable[[], object]) -> float:
    time.sleep(PROBE_GAP_S)
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def time_candidates(candidates: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds per call of each candidate: after a warm-up call each, the median of up to five
    rounds in which every candidate runs once, in turn (fewer rounds for slow ones), so a slow drift
    of the machine's load weighs on all of them alike. A candidate that raises (memory, an
    unsupported case) is left out.

    Each timed call starts `PROBE_GAP_S` after the last: long enough for OpenMP's threads to stop
    spinning, as they do in a training step where other work runs between two products, so a
    candidate that wakes a thread pool pays for it here as it does there (back-to-back calls chose
    MKL's threaded product at batch 2, which then cost a SET-MLP step 1.5x)."""
    global _first_call_s
    times: dict[str, list[float]] = {}
    for name, run in candidates.items():
        try:
            start = time.perf_counter()
            run()
            warm_up = time.perf_counter() - start
            times[name] = [_timed(run)]
            _first_call_s += max(0.0, warm_up - times[name][0])
        except Exception:  # noqa: BLE001 - a candidate that cannot run is no candidate
            continue
    rounds = _rounds(max((t[0] for t in times.values()), default=0.0))
    for _ in range(rounds - 1):
        for name in list(times):
            times[name].append(_timed(candidates[name]))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _read(path: Path) -> dict:
    """The cache file's content, or an empty cache for a missing, unreadable or corrupt file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except Exception:  # noqa: BLE001 - any unreadable cache is an empty one
        data = None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("machines"), dict):
        return {"format": CACHE_FORMAT, "machines": {}}
    data["machines"] = {k: v for k, v in data["machines"].items() if isinstance(v, dict) and isinstance(v.get("decisions"), dict)}
    return data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a lock file) while the cache is read, merged and renamed."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the rename still keeps the file whole
        yield
        return
    with open(path, "a") as handle:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
        yield  # closing the file releases the lock


def _write_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class Dispatcher:
    """The decisions of one process: the mode, what was measured or read, the probe budget left.

    Callers look a key up in `decisions` themselves (one dict lookup per call) and call `decide`
    on a miss.
    """

    def __init__(self, mode: str | None = None, path: str | os.PathLike | None = None, budget: float = PROBE_BUDGET_S):
        self.mode = read_mode() if mode is None else read_mode({"ITOP_KERNELS": mode})
        self.path = Path(path) if path is not None else cache_dir() / CACHE_FILE
        self.budget_left = budget
        self.decisions: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}  # measured by this process: seconds per call
        self.probes = 0
        self._failed: set[tuple] = set()
        self._loaded, self._writable, self._depth = False, True, 0
        self._machine: dict | None = None
        self._lock = threading.RLock()

    @property
    def machine(self) -> dict:
        if self._machine is None:
            self._machine = machine()
        return self._machine

    @property
    def machine_id(self) -> str:
        return " | ".join(f"{name} {value}" for name, value in self.machine.items())

    def decide(
        self, key: tuple, probe: Callable[[], Mapping[str, float]], fallback: Callable[[], str], handicap: Mapping[str, float] | None = None
    ) -> str:
        """The choice for `key`: read from the cache, else measured by `probe` (timings by candidate)
        while the budget lasts, else `fallback()` (not remembered: the budget never comes back).
        `handicap` multiplies a candidate's time in the comparison (its measured time is recorded)."""
        if torch.compiler.is_compiling():  # no file or clock inside a traced graph
            return fallback()
        with self._lock:
            if not self._loaded:
                self.load()
            found = self.decisions.get(key)
            if found is not None:
                return found
            if distributed():  # every rank takes what the cache held, else the rule: all compute alike
                self.decisions[key] = choice = fallback()
                return choice
            if self.budget_left <= 0 or key in self._failed:
                return fallback()
            start, first_calls = time.perf_counter(), _first_call_s
            self._depth += 1  # a probe may need other decisions (the masked engine's products): one budget charge
            try:
                timings = dict(probe())
            except Exception:  # noqa: BLE001 - a class whose data cannot be built keeps the fixed rule
                timings = {}
            finally:
                self._depth -= 1
                if not self._depth:  # a first call's compiling or loading of kernels is paid once per process anyway
                    self.budget_left -= time.perf_counter() - start - (_first_call_s - first_calls)
            if not timings:
                self._failed.add(key)
                return fallback()
            weights = handicap or {}
            choice = min(timings, key=lambda name: timings[name] * weights.get(name, 1.0))
            self.decisions[key], self.timings[key] = choice, timings
            self.probes += 1
            self.save()
            return choice

    def load(self) -> None:
        """Take this machine's decisions from the cache file (those of this process win)."""
        self._loaded = True
        entry = _read(self.path)["machines"].get(self.machine_id, {})
        for text, value in entry.get("decisions", {}).items():
            key, choice = decode(text), value.get("use") if isinstance(value, dict) else value
            if key is not None and isinstance(choice, str):
                self.decisions.setdefault(key, choice)

    def save(self) -> None:
        """Merge this process's measurements into the cache file; give up quietly if it cannot be written."""
        if not self._writable or not self.timings:
            return
        measured = {
            encode(key): {"use": self.decisions[key], "us": {name: round(t * 1e6, 1) for name, t in timings.items()}}
            for key, timings in self.timings.items()
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.path.with_name(self.path.name + ".lock")):
                data = _read(self.path)
                entry = data["machines"].setdefault(self.machine_id, {"decisions": {}})
                entry["machine"] = self.machine
                entry["decisions"].update(measured)
                _write_atomically(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        except Exception:  # noqa: BLE001 - an unwritable cache costs the next process its probes, nothing else
            self._writable = False

    def cached(self) -> tuple[int, int]:
        """(decisions the cache file holds for this machine, for all machines)."""
        machines = _read(self.path)["machines"]
        return len(machines.get(self.machine_id, {}).get("decisions", {})), sum(len(m["decisions"]) for m in machines.values())


def distributed() -> bool:
    """Inside a process group of more than one process (torchrun): no probes there, as ranks timing
    their own probes could choose differently and so round differently from one another, and a
    rerun (reading the cache they wrote) differently from the first run."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


active: Dispatcher | None = None  # the process's dispatcher, made on first use


def current() -> Dispatcher:
    """The process's dispatcher (made on first use: an unknown ITOP_KERNELS raises here)."""
    global active
    if active is None:
        active = Dispatcher()
    return active


def reset(**options) -> Dispatcher:
    """Start over with a fresh dispatcher (environment read again), e.g. after changing ITOP_KERNELS."""
    global active
    active = Dispatcher(**options)
    return active
