"""``t5vae train`` on a CPU restarts itself once with glibc's huge-page malloc.

Only the command line does this (never ``import t5vae``), and only where it was measured to pay: on the
CPU backend (no accelerator plugin installed, or ``JAX_PLATFORMS=cpu``). ``T5VAE_HUGEPAGES=0`` opts out.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path

# jax's accelerator plugins: with one installed, training runs on the accelerator, not in host memory
ACCELERATOR_PLUGINS = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
    "libtpu",
)


def cpu_backend(env: dict) -> bool:
    """Whether jax will run on the CPU: ``JAX_PLATFORMS`` says cpu, or no accelerator plugin is installed."""
    platforms = env.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(m) is not None for m in ACCELERATOR_PLUGINS)


HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def hugepage_env(env: dict, system: str, libc: tuple[str, str], thp: str | None) -> dict | None:
    """The environment to restart ``t5vae train`` in so that glibc's malloc backs large allocations with
    transparent huge pages, or None where that does not apply: not Linux with glibc >= 2.35, THP off
    (``thp``: the kernel's setting, None if unreadable), already set, or ``T5VAE_HUGEPAGES=0``.

    Why: XLA's CPU runtime allocates each step's temporaries afresh, and in 4 KiB pages every step faults
    them all in again. With huge pages the default T5-VAE's train step runs faster (benchmarks/NOTES.md).
    glibc reads GLIBC_TUNABLES only at start-up."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if env.get("T5VAE_HUGEPAGES", "1") == "0" or "glibc.malloc.hugetlb" in tunables:
        return None
    name, version = libc
    try:
        new_enough = tuple(int(v) for v in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        new_enough = False
    if system != "Linux" or name != "glibc" or not new_enough or thp is None or "[never]" in thp:
        return None
    return dict(env, GLIBC_TUNABLES=f"{tunables}:{HUGEPAGE_TUNABLE}" if tunables else HUGEPAGE_TUNABLE)


def restart_with_hugepages(argv: list[str]) -> None:
    """Replace this process by ``python -m t5vae.cli ARGV`` under :func:`hugepage_env`, when it applies."""
    try:
        thp = THP_SETTING.read_text()
    except OSError:
        thp = None
    env = hugepage_env(dict(os.environ), platform.system(), platform.libc_ver(), thp)
    if env is not None and sys.executable and cpu_backend(env):
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, "-m", "t5vae.cli", *argv], env)
        except OSError as e:  # could not restart: train as we are, only slower
            print(
                f"note: not restarted with huge-page malloc ({e}); T5VAE_HUGEPAGES=0 skips trying",
                file=sys.stderr,
            )
