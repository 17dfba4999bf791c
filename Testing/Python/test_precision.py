"""The network's number format: bfloat16 only on a CPU that has it natively, float16 on CUDA, a switch to turn
bfloat16 off."""
from __future__ import annotations

import torch

from KneeSegmentationLib.segment import precision


def test_bfloat16_only_where_the_cpu_reports_native_bf16(monkeypatch):
    monkeypatch.delenv(precision.ENV_SWITCH, raising=False)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.inference_dtype("cpu") is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.inference_dtype("cpu") is None
    assert precision.inference_dtype("cuda") is torch.float16
    assert precision.inference_dtype("mps") is None


def test_the_switch_turns_bfloat16_off(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv(precision.ENV_SWITCH, "0")
    assert precision.inference_dtype("cpu") is None
    monkeypatch.setenv(precision.ENV_SWITCH, "1")
    assert precision.inference_dtype("cpu") is torch.bfloat16


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse avx512f avx512_bf16\n")
    real_path = precision.Path
    monkeypatch.setattr(precision, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert precision.cpu_has_fast_bf16()
    info.write_text("flags\t\t: fpu sse avx2\n")
    assert not precision.cpu_has_fast_bf16()
    monkeypatch.setattr(precision, "Path", lambda p: tmp_path / "missing")
    assert not precision.cpu_has_fast_bf16()
