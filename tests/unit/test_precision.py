"""`--mixed-precision auto` picks bf16 only where it is native; the CPU flags are read from /proc/cpuinfo."""

from __future__ import annotations

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.trainers.precision import cpu_has_native_bf16, resolve_precision

AVX2 = "flags : fpu vme sse sse2 avx avx2 fma"
SAPPHIRE = "flags : fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile"


def test_native_bf16_flags() -> None:
    assert not cpu_has_native_bf16(AVX2)
    assert cpu_has_native_bf16(SAPPHIRE)
    assert not cpu_has_native_bf16("flags : avx512_bf16x")  # a whole flag, not a prefix


@pytest.mark.parametrize(("cuda", "native", "expected"), [(False, False, "no"), (False, True, "bf16")])
def test_auto_on_cpus(cuda: bool, native: bool, expected: str) -> None:
    assert resolve_precision("auto", cuda=cuda, native_cpu_bf16=native) == expected


def test_explicit_settings_are_kept_and_fp16_needs_a_gpu() -> None:
    assert resolve_precision("bf16", cuda=False) == "bf16"
    assert resolve_precision("no", cuda=False) == "no"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cuda=False)


def test_runs_in_one_process_may_ask_for_different_precisions() -> None:
    # accelerate keeps one precision per process; a later run with another must still get its own
    # (the suite on a CPU with native bf16 runs `auto` = bf16 beside explicit `no`).
    from types import SimpleNamespace

    import torch

    from rlhfkit.trainers.common import make_accelerator

    threads = torch.get_num_threads()
    cfg = lambda mp: SimpleNamespace(threads=threads, mixed_precision=mp, report_to=[],  # noqa: E731
                                     dtype="float32", trust_remote_code=False)
    for mp in ("no", "bf16", "no"):
        accelerator = make_accelerator(cfg(mp))
        assert accelerator.mixed_precision == mp
        with accelerator.autocast():
            y = torch.nn.Linear(4, 4)(torch.ones(1, 4))
        assert y.dtype == (torch.bfloat16 if mp == "bf16" else torch.float32)
