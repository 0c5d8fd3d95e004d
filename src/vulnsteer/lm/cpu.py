"""What this machine's CPU computes natively, read from ``/proc/cpuinfo`` (no torch import).

bfloat16 matrix products are fast only on a CPU with bf16 instructions; elsewhere PyTorch emulates them, several
times slower than float32. The scan scorer asks :func:`cpu_runs_bf16` before it loads a model in bfloat16 on the CPU
(:func:`vulnsteer.scan.spec.choose_dtype`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BF16_FLAGS", "CPUINFO", "cpu_runs_bf16"]

#: Where Linux describes the CPU.
CPUINFO = Path("/proc/cpuinfo")
#: The x86 ``flags`` of native bf16 arithmetic: AVX-512 BF16 (dot products) and AMX BF16 (tile matrix products).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_runs_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU runs bfloat16 natively: the first x86 ``flags`` line of *cpuinfo* names one of
    :data:`BF16_FLAGS`. False where *cpuinfo* cannot be read (macOS, Windows) and on other platforms (an Arm
    ``Features`` line is not read), where bfloat16 would be emulated.

    >>> import tempfile
    >>> info = Path(tempfile.mkdtemp()) / "cpuinfo"
    >>> _ = info.write_text("processor\\t: 0\\nflags\\t\\t: fpu sse2 avx512f avx512_bf16\\n")
    >>> cpu_runs_bf16(info), cpu_runs_bf16(info.parent / "missing")
    (True, False)
    """
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() == "flags":
            return not BF16_FLAGS.isdisjoint(value.split())
    return False
