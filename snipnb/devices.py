"""Where runs execute, and the per-device settings that make them fast, chosen in one place.

Each setting was measured on the device it is set for (`benchmarks/RESULTS.md`, `benchmarks/test_pass.py`);
a device nobody measured keeps PyTorch's behaviour. None of them changes what a run computes except
bf16 evaluation, whose effect on accuracy was measured and is stated where it is chosen.

- **Freed memory stays with the process on the CPU** (`keep_freed_memory`). glibc hands every large
  block (an activation of a conv net at batch 256 is 50 MB) back to the kernel when it is freed, and
  the next batch pays a page fault for every 4 KiB of it again: 2.3 million faults and 60% of the
  time of an MNIST test pass at batch 2,048 are the kernel's. Asking glibc to keep what it frees
  removes them without changing a number: the pass runs 3x faster, at 89% of the core's fp32 peak.
- **Test passes in batches of 256 on the CPU** (`eval_batch_size`): with freed memory kept, 64 to
  2,048 images per batch cost within 10% of each other; 256 is within 4% of the best for every
  chapter's network and keeps a ResNet's activations in a few hundred MB.
- **bf16 autocast** (`autocast_enabled`): for training on CUDA (as before), and for evaluation on
  CUDA and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where a test pass runs 1.5-1.8x
  faster and moved test accuracy by at most 0.09 points over 16 trained networks (benchmarks/
  bf16_accuracy.py). Asked for on a device without it, a warning says fp32 is used instead.
- **One single-threaded worker per core on the CPU** (`default_workers`): a small run keeps one core
  busy; two threads of one run wait on each other.
- **A fixed thread count where bits must repeat** (`cpu_threads`): a CPU run is bit-reproducible for a
  given number of threads, not across them (a convolution's reductions are split by thread). Pretrained
  sources are made at `pretrained.PRETRAIN_THREADS` whatever the caller runs at.
- **Stacks on the GPU only** (`default_stack`): on the CPU a vmapped stack of runs is slower per run
  than `train.fit` one run at a time (grouped convolutions, batched matrix products).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import warnings

import torch

from . import checks

# Test images per batch, per device type: measured fastest on a 2-core AMD EPYC (benchmarks/RESULTS.md).
# Devices not listed (CUDA, MPS: not measured here) keep the earlier default.
EVAL_BATCH_SIZE = {"cpu": 256}
DEFAULT_EVAL_BATCH_SIZE = 2048
# Runs trained together as one stack, per device type: on the CPU one run at a time (`train.fit`) beats
# a stack (benchmarks/RESULTS.md); on a GPU a stack fills a device one small run leaves idle (unmeasured).
STACK_SIZE = {"cpu": 1}
DEFAULT_STACK_SIZE = 32


def default_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------- memory

# glibc's mallopt parameters (malloc.h) and the values set: large blocks come from the heap rather
# than fresh mappings, and the heap is not trimmed back to the kernel after each free.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB from the heap
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest, i.e. never trim in practice
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (once per process).

    A process's memory then stays at its peak, which for these runs is a few hundred MB. Only where
    the C library is glibc (Linux); elsewhere, or with `SNIPNB_MALLOC=system`, nothing is changed.
    Returns whether the setting is in force.
    """
    global _kept
    if _kept is None:
        _kept = False
        if os.environ.get("SNIPNB_MALLOC", "").lower() != "system" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)
                _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
            except (OSError, AttributeError):
                _kept = False
    return _kept


# ----------------------------------------------------------------------------------- precision


def bf16_native(device) -> bool:
    """Whether `device` does bf16 arithmetic natively: CUDA GPUs that support it, CPUs with
    AVX512-BF16 or AMX. (Elsewhere PyTorch emulates it, more slowly than fp32.)"""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
        return any(check is not None and check() for check in probes)
    return False


_warned: set = set()


def autocast_enabled(device, amp: bool | None, purpose: str) -> bool:
    """Whether to run `purpose` ("training" or "evaluation") in bf16 autocast on `device`.

    `amp=None` takes the device's default: training in bf16 on CUDA only; evaluation in bf16 on CUDA
    and on CPUs with native bf16. `amp=True` on a device without native bf16 falls back to fp32 with
    one warning per device and purpose, naming what was used.
    """
    if purpose not in ("training", "evaluation"):
        raise ValueError(f"purpose must be 'training' or 'evaluation', got {purpose!r}")
    device = torch.device(device)
    native = bf16_native(device)
    if amp is None:
        return native and (device.type == "cuda" or purpose == "evaluation")
    if amp and not native:
        key = (device.type, purpose)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"bf16 {purpose} was asked for, but this {device.type} has no native bf16 arithmetic "
                          f"(AVX512-BF16 or AMX on a CPU): running {purpose} in fp32 instead", stacklevel=3)
        return False
    return bool(amp)


# ------------------------------------------------------------------------------- sizes per device


def eval_batch_size(device) -> int:
    """Test images per batch on `device` (`EVAL_BATCH_SIZE`, measured; else `DEFAULT_EVAL_BATCH_SIZE`)."""
    return EVAL_BATCH_SIZE.get(torch.device(device).type, DEFAULT_EVAL_BATCH_SIZE)


def default_stack(device) -> int:
    """Runs per stack on `device` (`STACK_SIZE`, measured; else `DEFAULT_STACK_SIZE`)."""
    return STACK_SIZE.get(torch.device(device).type, DEFAULT_STACK_SIZE)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(device) -> int:
    """Sweep processes to run at once on `device`: one single-threaded worker per core on the CPU;
    one on a GPU, whose runs a stack already fills (the GPU benchmark is still to be measured)."""
    return cpu_cores() if torch.device(device).type == "cpu" else 1


@contextlib.contextmanager
def cpu_threads(threads: int):
    """torch's intra-op thread count set to `threads` inside the block and restored after it."""
    checks.integer("threads", threads, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
