"""glibc allocator tuning: freed blocks are reused without page faults, and the user's own choice is kept."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from rlhfkit.trainers.host_memory import user_chose_allocator

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

# Rounds of allocating, touching and freeing tensors (argv[1] floats each, argv[2] at a time); prints whether
# the setting was applied and the minor page faults of the last 10 of 20 rounds. glibc's defaults fault
# such rounds in again at erratic rounds (a free heap top above twice the last mmap threshold is given
# back); with the setting the heap keeps the blocks and a settled round takes no page fault.
PROBE = """
import resource, sys, torch
from rlhfkit.trainers import host_memory
applied = host_memory.keep_freed_memory()
floats, count = int(sys.argv[1]), int(sys.argv[2])
for i in range(20):
    if i == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones(floats) for _ in range(count)]
    del xs
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(floats: int, count: int, **env: str) -> tuple[bool, int, int]:
    """(applied, page faults of the 10 measured rounds, pages those rounds touch)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(floats), str(count)], env={**clean, **env},
                         capture_output=True, text=True, check=True, timeout=120).stdout.split()
    return out[0] == "True", int(out[1]), 10 * count * 4 * floats // os.sysconf("SC_PAGE_SIZE")


@glibc_only
@pytest.mark.parametrize("floats,count", [(50_000, 100), (5_000_000, 3)], ids=["100x200KB", "3x20MB"])
def test_freed_blocks_are_reused_without_page_faults(floats, count):
    applied, faults, pages = probe(floats, count)
    assert applied
    assert faults < pages // 100  # settled rounds reuse the heap's pages


@glibc_only
def test_user_tuning_is_left_alone():
    # the user's threshold of 128 KiB, fixed: every 20 MB block is a fresh mapping, faulted in at each round
    applied, faults, pages = probe(5_000_000, 3, MALLOC_MMAP_THRESHOLD_="131072")
    assert not applied
    assert faults > pages // 2


def test_user_choice_is_read_from_the_environment():
    assert not user_chose_allocator({})
    assert user_chose_allocator({"MALLOC_TRIM_THRESHOLD_": "1000"})
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"})
    assert user_chose_allocator({"MALLOC_ARENA_MAX": "2"})
    assert user_chose_allocator({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000"})
    assert not user_chose_allocator({"LD_PRELOAD": "/usr/lib/libfoo.so", "MALLOC_ARENA_MAX": "", "PATH": "/bin"})
