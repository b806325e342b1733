"""Measuring and reporting for the scripts in ``benchmarks/``.

* timing: ``time_call`` (CUDA-synchronized wall time), ``time_alternating`` (variants timed in
  turn, ``--repeats`` times: wall and CPU time and memory per run, an :class:`Alternated`),
  ``median``;
* memory: ``reset_peak_memory``/``peak_memory_mb`` for the process, :class:`PeakMemory` for one
  block (with ``pin_malloc_to_mmap`` so the CPU's RSS follows live tensors);
* ``environment``: versions, device, threads, load, for the JSON record;
* output: ``emit`` prints one human-readable line (``headline`` and ``ratio_note`` build its
  common parts), then one JSON line (``{"benchmark": ...}``) per result; ``log`` writes
  progress to stderr, so stdout holds only result lines.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# --------------------------------------------------------------------------- timing and memory


def synchronize(device: str | torch.device) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def time_call(fn: Callable[[], Any], device: str | torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device synchronized before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def reset_peak_memory(device: str | torch.device) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_mb(device: str | torch.device) -> dict[str, float]:
    """CUDA: peak allocated since the last reset. CPU: the process' peak RSS so far."""
    dev = torch.device(device)
    out = {}
    if dev.type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["process_peak_rss_mb"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
    return out


def _rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # Linux fallback
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pin_malloc_to_mmap(threshold: int = 1 << 16) -> bool:
    """glibc: serve every allocation above ``threshold`` bytes with its own ``mmap`` and return it
    to the OS on free (fixed threshold, no dynamic raise; trim at the same size). Then the RSS
    follows live tensor memory instead of malloc's free lists. Returns False where not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def pin_cpu_malloc(device: str) -> bool:
    """:func:`pin_malloc_to_mmap` on the CPU (where :class:`PeakMemory` reads the RSS); whether it took."""
    return torch.device(device).type == "cpu" and pin_malloc_to_mmap()


def peak_memory_method(device: str, mmap_pinned: bool) -> str:
    """How :class:`PeakMemory` measured on ``device`` (for the JSON record)."""
    if torch.device(device).type == "cuda":
        return "cuda max_memory_allocated above the pre-call allocation"
    return "sampled process RSS (1 ms) above the pre-call RSS" + (
        ", glibc mallopt: allocations > 64 KiB mmap-backed" if mmap_pinned else "")


class PeakMemory:
    """Peak memory of a block above its starting point, in MB (``peak_mb``).

    GPU: ``torch.cuda.max_memory_allocated`` above what was allocated at the start (exact for the
    caching allocator). CPU: torch has no allocator statistics and ``tracemalloc`` does not see
    torch's allocations, so the peak resident set size sampled every ``interval`` seconds by a
    thread, minus the RSS at the start; with :func:`pin_malloc_to_mmap` the RSS follows live
    tensors. A peak shorter than the interval can be missed: CPU numbers are lower bounds.
    """

    def __init__(self, device: str, interval: float = 0.001):
        self.cuda = torch.device(device).type == "cuda"
        self.device, self.interval = device, interval
        self.peak_mb = float("nan")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = _rss_bytes()
            self._peak = self._start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_mb = (self._peak - self._start) / 2**20


@dataclass
class Alternated:
    """What :func:`time_alternating` measured, per variant name, one entry per run."""

    seconds: dict[str, list[float]]
    cpu_seconds: dict[str, list[float]]
    peak_mb: dict[str, list[Any]]  # memory="block": PeakMemory MB; "process": peak_memory_mb() dicts
    results: dict[str, list[Any]]

    def rate(self, amount: float) -> dict[str, float]:
        """``amount`` (tokens, rows) per median second."""
        return {k: amount / median(v) for k, v in self.seconds.items()}

    def cpu_time_ratio(self, reference: str = "baseline", other: str = "ours") -> float:
        """Median CPU seconds of ``reference`` / those of ``other`` (throughput ratio by CPU time)."""
        return median(self.cpu_seconds[reference]) / median(self.cpu_seconds[other])

    def median_peak_mb(self, digits: int = 1) -> dict[str, float]:
        return {k: round(median(v), digits) for k, v in self.peak_mb.items()}

    def rounded_seconds(self, digits: int, *, cpu: bool = False) -> dict[str, list[float]]:
        """``{"<name>_s": [wall seconds]}`` (``cpu``: ``{"<name>_cpu_s": [CPU seconds]}``), rounded."""
        times, suffix = (self.cpu_seconds, "_cpu_s") if cpu else (self.seconds, "_s")
        return {f"{k}{suffix}": [round(t, digits) for t in v] for k, v in times.items()}


def time_alternating(variants: dict[str, Callable[[], Any]], repeats: int, device: str, *,
                     memory: str = "block") -> Alternated:
    """Run each of ``variants`` in turn, ``repeats`` rounds (so drift from other load hits all alike),
    each run timed by :func:`time_call` and by process CPU time. ``memory``: ``"block"`` wraps
    each run in :class:`PeakMemory`; ``"process"`` resets the CUDA peak before the run and records
    :func:`peak_memory_mb` after it."""
    if memory not in ("block", "process"):
        raise ValueError(f"memory must be 'block' or 'process', not {memory!r}")
    out = Alternated(*({k: [] for k in variants} for _ in range(4)))
    for _ in range(repeats):
        for name, fn in variants.items():
            cpu0 = time.process_time()
            if memory == "block":
                with PeakMemory(device) as pm:
                    seconds, result = time_call(fn, device)
                peak = pm.peak_mb
            else:
                reset_peak_memory(device)
                seconds, result = time_call(fn, device)
                peak = peak_memory_mb(device)
            out.seconds[name].append(seconds)
            out.cpu_seconds[name].append(time.process_time() - cpu0)
            out.peak_mb[name].append(peak)
            out.results[name].append(result)
    return out


def environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    env = {
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("transformer-lens", "persona-lens"):
        try:
            env[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            env[dist.replace("-", "_")] = None
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


# --------------------------------------------------------------------------- output


def emit(benchmark: str, human: str, record: dict[str, Any]) -> None:
    """Print one human-readable line and one JSON line (``{"benchmark": ..., ...}``)."""
    print(human, flush=True)
    print(json.dumps({"benchmark": benchmark, **record}, default=_json_default, sort_keys=False), flush=True)


def headline(benchmark: str, subject: Any, device: str, env: dict[str, Any]) -> str:
    """The start of a human line: ``"<benchmark> <model> <device>/<dtype> "``."""
    return f"{benchmark} {subject.label} {device}/{env['dtype']} "


def ratio_note(ratio: float, repeats: int, cpu_time_ratio: float | None = None) -> str:
    """The end of a human line: ``"ratio R (CPU-time ratio C; median of N)"``."""
    cpu = "" if cpu_time_ratio is None else f"CPU-time ratio {cpu_time_ratio:.3f}; "
    return f"ratio {ratio:.3f} ({cpu}median of {repeats})"


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.dtype):
        return str(o).replace("torch.", "")
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def log(msg: str) -> None:
    """Progress notes go to stderr so stdout holds only result lines."""
    print(msg, file=sys.stderr, flush=True)
