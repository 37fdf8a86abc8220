"""The machine delineo runs on: device choice, precision, threads, and the one-line description of
the hardware that model cards and benchmark results record.

Used by training, inference and the benchmarks alike; it sits at the bottom of the house and imports
nothing of delineo but :mod:`delineo.errors`.
"""

from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from pathlib import Path

import torch

from delineo.errors import InputError

__all__ = ["autocast_context", "bf16_available", "cpu_name", "hardware_description", "resolve_device", "set_threads"]


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"device {device!r} requested but no CUDA device is available")
    return torch.device(device)


def bf16_available(device: torch.device | str) -> bool:
    """bfloat16 autocast is fast here: any CUDA device, or a CPU whose oneDNN has native bf16
    (AVX512-BF16 / AMX); on other CPUs bf16 is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_context(device: torch.device | str, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def set_threads(threads: int | None) -> int:
    """Use ``threads`` torch threads (unchanged when None or 0); returns the number in use before."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    return before


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, e.g. "AMD EPYC 9R14"), else the architecture: two
    hosts of one cloud type can differ, and throughput (epochs per CPU-hour) differs with them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> str:
    """"<GPU name> (CUDA)" or "CPU: <model name> (<arch>), <n> cores, torch <n> threads"."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"
