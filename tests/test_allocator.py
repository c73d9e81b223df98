"""The project's processes run on tcmalloc where it is installed (``icmh.allocator``): the re-executed command has
it loaded, ``ICMH_ALLOCATOR=system`` keeps glibc's malloc, an unknown choice is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from icmh.allocator import ALLOCATOR_ENV, REEXEC_ENV, tcmalloc_path, with_fast_allocator

SCRIPT = ("import sys; from icmh.allocator import allocator_in_use, reexec_with_fast_allocator; "
          "reexec_with_fast_allocator(None if sys.argv[1] == 'command' else []); print(allocator_in_use())")


def run(mode: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (ALLOCATOR_ENV, REEXEC_ENV, "LD_PRELOAD")}
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60,
                          env={**base, **env})


@pytest.mark.skipif(tcmalloc_path() is None, reason="tcmalloc (Debian libtcmalloc-minimal4) is not installed")
def test_commands_reexecute_on_tcmalloc_unless_told_otherwise() -> None:
    assert run("command").stdout.split() == ["tcmalloc"]
    assert run("in-process").stdout.split() == ["system"]  # explicit arguments (tests): never re-executed
    assert run("command", **{ALLOCATOR_ENV: "system"}).stdout.split() == ["system"]
    refused = run("command", **{ALLOCATOR_ENV: "jemalloc"})
    assert refused.returncode != 0 and "ICMH_ALLOCATOR must be tcmalloc or system" in refused.stderr


def test_child_environment_preloads_tcmalloc_once() -> None:
    path = tcmalloc_path()
    env = with_fast_allocator({"LD_PRELOAD": "/opt/other.so", "A": "1"})
    assert env["A"] == "1"
    if path is None:
        assert env["LD_PRELOAD"] == "/opt/other.so"
        return
    assert env["LD_PRELOAD"].split() == [path, "/opt/other.so"]
    assert with_fast_allocator(env) == env  # idempotent
    assert "LD_PRELOAD" not in with_fast_allocator({ALLOCATOR_ENV: "system"})
