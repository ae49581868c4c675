"""The allocator setting: freed blocks of megabytes are reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Six 8 MB blocks taken and freed twenty times: glibc's default trims the freed heap top each time.
CHURN = """
import resource, sys, numpy as np
from lass_cli.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    blocks = [np.ones(2 << 20, np.float32) for _ in range(6)]
    del blocks
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def churn(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout.split()  # fmt: skip
    return out[0] == "True", int(out[1])


def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = churn("keep")
    if not applied:
        pytest.skip("not glibc on Linux: the allocator is left as it is")
    _, default = churn("default")
    assert kept * 5 < default  # about 3,000 against 60,000 page faults here


def test_a_users_malloc_settings_are_left_alone():
    applied, _ = churn("keep", MALLOC_ARENA_MAX="2")
    assert not applied
