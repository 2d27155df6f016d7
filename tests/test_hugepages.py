"""The huge-page restart of ``t5vae train`` (t5vae.hugepages): where it applies, that only the train command
restarts, that a failed exec trains on, and that it applies only on the CPU backend."""

import importlib.util
import os
import sys

import pytest

from t5vae import cli, hugepages


def test_train_restarts_with_hugepage_malloc_only_where_it_applies():
    thp, linux = "always [madvise] never\n", ("Linux", ("glibc", "2.36"))
    env = {"PATH": "/bin"}
    got = hugepages.hugepage_env(env, *linux, thp)
    assert got == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    other = hugepages.hugepage_env({"GLIBC_TUNABLES": "glibc.cpu.x86_shstk=off"}, *linux, thp)
    assert other["GLIBC_TUNABLES"] == "glibc.cpu.x86_shstk=off:glibc.malloc.hugetlb=1"  # kept, appended to
    for args in [
        (got, *linux, thp),  # already restarted: never twice
        ({"T5VAE_HUGEPAGES": "0"}, *linux, thp),  # opted out
        (env, "Darwin", ("", ""), thp),
        (env, "Linux", ("", ""), thp),  # no glibc (musl)
        (env, "Linux", ("glibc", "2.31"), thp),  # no glibc.malloc.hugetlb before 2.35
        (env, *linux, "always madvise [never]\n"),
        (env, *linux, None),
    ]:  # THP off, or no setting
        assert hugepages.hugepage_env(*args) is None, args


def test_only_the_train_command_restarts_itself(monkeypatch, tmp_path):
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))
        raise SystemExit(0)

    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(hugepages, "THP_SETTING", setting)
    monkeypatch.setattr(hugepages.platform, "system", lambda: "Linux")
    monkeypatch.setattr(hugepages.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("T5VAE_HUGEPAGES", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(sys, "argv", ["t5vae", "train", "--steps", "3"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [
        (
            sys.executable,
            [sys.executable, "-m", "t5vae.cli", "train", "--steps", "3"],
            {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
        )
    ]
    assert cli.main(["info", str(tmp_path / "missing")]) == 1  # an explicit argv never restarts
    monkeypatch.setattr(sys, "argv", ["t5vae", "info", str(tmp_path / "missing")])
    assert cli.main() == 1 and len(calls) == 1  # nor does any other command

    def failing_execve(path, args, env):
        raise PermissionError("exec refused")

    monkeypatch.setattr(os, "execve", failing_execve)  # a failed restart trains on, only slower
    monkeypatch.setattr(sys, "argv", ["t5vae", "train", "--corpus", str(tmp_path / "missing.txt")])
    assert cli.main() == 1  # reached the command itself: the corpus error


def test_cpu_backend_reads_jax_platforms_then_the_installed_plugins(monkeypatch):
    assert hugepages.cpu_backend({"JAX_PLATFORMS": "cpu"}) is True
    assert hugepages.cpu_backend({"JAX_PLATFORMS": "cuda"}) is False
    assert hugepages.cpu_backend({"JAX_PLATFORMS": "cpu,cuda"}) is True  # the first platform is the one used
    assert hugepages.cpu_backend({"JAX_PLATFORMS": "tpu,cpu"}) is False
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in hugepages.ACCELERATOR_PLUGINS else real(name, *a),
    )
    assert hugepages.cpu_backend({}) is True  # no accelerator plugin installed
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "jax_cuda12_plugin" else real(name, *a),
    )
    assert hugepages.cpu_backend({}) is False and hugepages.cpu_backend({"JAX_PLATFORMS": "cpu"}) is True


def test_no_restart_on_an_accelerator_backend(monkeypatch, tmp_path):
    calls = []
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
    monkeypatch.setattr(hugepages, "THP_SETTING", setting)
    monkeypatch.setattr(hugepages.platform, "system", lambda: "Linux")
    monkeypatch.setattr(hugepages.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("T5VAE_HUGEPAGES", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    hugepages.restart_with_hugepages(["train"])
    assert calls == []
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the same settings on the CPU backend do restart
    hugepages.restart_with_hugepages(["train"])
    assert len(calls) == 1 and calls[0][2]["GLIBC_TUNABLES"] == hugepages.HUGEPAGE_TUNABLE
