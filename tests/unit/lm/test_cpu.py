"""``vulnsteer.lm.cpu``: whether this CPU runs bfloat16 natively, read from a cpuinfo text (a file written here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vulnsteer.lm.cpu import cpu_runs_bf16

X86 = "processor\t: {n}\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16 i8mm sve\nCPU implementer\t: 0x41\n"


def _info(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("extra", "native"),
    [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False), ("", False), ("avx512_bf16x", False)],
)
def test_native_bf16_is_an_x86_flag(tmp_path: Path, extra: str, native: bool) -> None:
    text = "".join(X86.format(n=n, extra=extra) for n in range(2))
    assert cpu_runs_bf16(_info(tmp_path, text)) is native


def test_other_platforms_and_unreadable_files_keep_float32(tmp_path: Path) -> None:
    assert cpu_runs_bf16(_info(tmp_path, ARM)) is False  # (an Arm 'bf16' feature is not read: x86 flags only)
    assert cpu_runs_bf16(_info(tmp_path, "")) is False
    assert cpu_runs_bf16(tmp_path / "missing") is False  # no /proc (macOS, Windows)
    assert cpu_runs_bf16(tmp_path) is False  # a folder


def test_module_doctests() -> None:
    import doctest

    from vulnsteer.lm import cpu

    assert doctest.testmod(cpu).failed == 0
