"""glibc malloc thresholds for eager torch on the CPU: set once, from inside the process, only where it helps.

Each case runs in a fresh interpreter: the settings are per process and made once.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = """
import ctypes, resource
from scenetag.model.backends.glibc_malloc import keep_freed_memory
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
first = keep_freed_memory()
second = keep_freed_memory()
faults = []
for _ in range(3):  # a 64 MiB block, freed and allocated again: mmapped and faulted in each time by default
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buf = ctypes.create_string_buffer(64 << 20)
    del buf
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(first, second, faults[-1])
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc malloc settings: Linux with glibc only")


def run(env_extra: dict[str, str] | None = None) -> tuple[str, str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | (env_extra or {})
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()
    return out[0], out[1], int(out[2])


@glibc
def test_freed_blocks_are_reused_without_page_faults():
    first, second, faults = run()
    assert (first, second) == ("True", "True")
    # 64 MiB is 16384 pages: with the thresholds raised, the second allocation reuses the heap.
    assert faults < 1000


@glibc
def test_without_it_each_allocation_faults_its_pages_in_again():
    """What the setting removes (so the test above can fail): glibc's default maps a 64 MiB block afresh."""
    code = CODE.replace("first = keep_freed_memory()", "first = False").replace("second = keep_freed_memory()",
                                                                                  "second = False")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()
    assert int(out[2]) > 10000


@glibc
def test_a_user_s_own_malloc_setting_stands():
    first, second, _ = run({"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert (first, second) == ("False", "False")
