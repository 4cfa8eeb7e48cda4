"""The whole suite runs with the algos' value-reading checks on (token ids in range, weights >= 0,
...), which production code runs only in the first iteration of a run or under RLHFKIT_CHECK_VALUES=1.

`--mixed-precision auto` means fp32 in every test run in this process, whatever the CPU: on a CPU with
native bf16 it would mean bf16 autocast, and the suite's numbers (float64 references, equal results
of two code paths, learning thresholds) would depend on the machine CI draws. Tests of the bf16 path
ask for bf16 explicitly; tests/unit/test_precision.py tests what `auto` picks on each kind of CPU.
"""

import os

import pytest

os.environ.setdefault("RLHFKIT_CHECK_VALUES", "1")


@pytest.fixture(autouse=True, scope="session")
def _auto_precision_is_fp32():
    from rlhfkit.trainers import precision

    real = precision.cpu_has_native_bf16
    precision.cpu_has_native_bf16 = lambda cpuinfo=None: False if cpuinfo is None else real(cpuinfo)
    yield
    precision.cpu_has_native_bf16 = real


@pytest.fixture
def cpu_accelerator():
    """A factory of real accelerators on this CPU: `cpu_accelerator("bf16")`, default fp32 ("no").
    Accelerate keeps one precision per process, so use one accelerator at a time."""
    from types import SimpleNamespace

    import torch

    from rlhfkit.trainers.common import make_accelerator

    def make(precision: str = "no"):
        return make_accelerator(SimpleNamespace(threads=torch.get_num_threads(), mixed_precision=precision,
                                                report_to=[], dtype="float32", trust_remote_code=False))

    return make
