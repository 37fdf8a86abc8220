"""delineo.machine: device choice, precision, threads, the hardware description."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from delineo.errors import InputError
from delineo.machine import autocast_context, bf16_available, cpu_name, hardware_description, resolve_device, set_threads


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")


def test_hardware_names_the_cpu_model(monkeypatch, tmp_path):
    """Results name the CPU model, not only the architecture: hosts of one machine type differ."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(info if str(self) == "/proc/cpuinfo" else self, *a, **k))
    assert hardware_description(torch.device("cpu")).startswith(f"CPU: AMD EPYC 9R14 96-Core Processor ({platform.machine()}), ")
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    assert cpu_name() == (platform.processor() or platform.machine())


def test_set_threads_returns_the_previous_number_and_ignores_none():
    before = torch.get_num_threads()
    try:
        assert set_threads(None) == before and torch.get_num_threads() == before
        assert set_threads(2) == before and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_autocast_off_is_a_no_op_and_bf16_is_a_bool():
    with autocast_context("cpu", False):
        assert torch.ones(2, 2).mm(torch.ones(2, 2)).dtype == torch.float32
    assert isinstance(bf16_available("cpu"), bool)
    assert bf16_available("meta") is False
