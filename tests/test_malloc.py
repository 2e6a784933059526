"""probe.malloc: glibc keeps freed memory for reuse, once per process, unless the user configured glibc."""

import json
import os
import platform
import subprocess
import sys

import pytest

CHECK = ("import json; from probe.malloc import keep_freed_memory as k;"
         " first = k(); print(json.dumps([first, k() is first]))")


def _run(env_changes: dict) -> tuple[dict, bool]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("GLIBC_TUNABLES", "LD_PRELOAD") and not key.startswith("MALLOC_")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result, same = json.loads(out.stdout)
    return result, same


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only; elsewhere keep_freed_memory does nothing")
def test_applies_once_on_glibc():
    result, same = _run({})
    assert result == {"applied": True, "mmap_threshold": 32 * 2**20, "trim_threshold": 2**30}
    assert same  # a second call changes nothing and reports the same


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"},
                                 {"MALLOC_ARENA_MAX": "2"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"}])
def test_leaves_the_users_glibc_settings_alone(env):
    result, _ = _run(env)
    assert result["applied"] is False
    if platform.libc_ver()[0] == "glibc":
        assert result["why"] == "the environment sets glibc malloc options"
