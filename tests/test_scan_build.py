"""The compiled scan kernel's build folder, flags and one-time-build notes, without building.

The folder's name (scan_cpp.module_name) must change with everything that changes torch's
build commands or the library (another environment, torch, compiler flags, source) and stay
the same otherwise: a shared name means two environments rebuild each other's kernel on every
switch (issue 16), a changing name means a rebuild in every process.
"""
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import mtad.ops.scan_cpp as scan_cpp
from mtad.cli import _format_warning

REAL_WHICH = shutil.which       # fresh_load replaces shutil.which while it runs


@pytest.fixture()
def env(monkeypatch, tmp_path):
    for key in (scan_cpp.MARCH_ENV, scan_cpp.NO_BUILD_ENV, "CXX"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    return monkeypatch


@pytest.mark.slow
def test_one_environment_always_gets_the_same_folder(env):
    name = scan_cpp.module_name()
    assert name == scan_cpp.module_name() and name.startswith("mtad_scan_cpu_")
    assert scan_cpp.build_dir() == scan_cpp.build_dir(name)
    assert str(scan_cpp.build_dir().parent) == os.environ["TORCH_EXTENSIONS_DIR"]
    # another process of the same environment (torch imported afresh)
    code = "import mtad.ops.scan_cpp as s; print(s.module_name())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == name


def test_other_environments_get_other_folders(env, tmp_path):
    base = scan_cpp.module_name()
    names = set()
    for target, attr, value in ((sys, "prefix", str(tmp_path / "other-venv")),   # a virtualenv
                                (torch, "__file__", str(tmp_path / "torch" / "__init__.py")),
                                (torch, "__version__", "0.0.1")):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(target, attr, value)
            names.add(scan_cpp.module_name())
    with pytest.MonkeyPatch.context() as m:
        m.setenv("CXX", "clang++")                                      # another compiler
        names.add(scan_cpp.module_name())
    assert len(names) == 4 and base not in names
    assert scan_cpp.module_name() == base                             # undone: the same again


def test_the_source_is_named_by_its_bytes_and_built_from_a_copy_in_the_folder(env, tmp_path):
    # Two checkouts of one source in one environment share the folder and, building from the
    # folder's copy, write the same build.ninja (its source path is the copy's): no rebuild
    # when a user alternates between them (shared/bugcases/27). Another source: another folder.
    base = scan_cpp.module_name()
    same = tmp_path / "checkout2" / scan_cpp.SOURCE.name
    same.parent.mkdir()
    shutil.copy(scan_cpp.SOURCE, same)
    env.setattr(scan_cpp, "SOURCE", same)
    assert scan_cpp.module_name() == base
    staged = scan_cpp._stage_source(scan_cpp.build_dir())
    assert staged.parent == scan_cpp.build_dir() and staged.read_bytes() == same.read_bytes()
    before = staged.stat().st_mtime_ns
    assert scan_cpp._stage_source(scan_cpp.build_dir()).stat().st_mtime_ns == before  # untouched
    same.write_bytes(same.read_bytes() + b"\n// changed\n")
    assert scan_cpp.module_name() != base


def test_march_override_sets_the_flag_and_changes_the_folder(env):
    native = scan_cpp.module_name()
    assert any(f.endswith("=native") for f in scan_cpp.build_flags())
    env.setenv(scan_cpp.MARCH_ENV, " x86-64-v3 ")
    flags = scan_cpp.build_flags()
    assert "-march=x86-64-v3" in flags or "-mcpu=x86-64-v3" in flags
    assert not any(f.endswith("=native") for f in flags)
    v3 = scan_cpp.module_name()
    env.setenv(scan_cpp.MARCH_ENV, "x86-64-v4")
    assert len({native, v3, scan_cpp.module_name()}) == 3
    env.setenv(scan_cpp.MARCH_ENV, "native -O0")                     # not one CPU name
    with pytest.raises(ValueError, match="MTAD_SCAN_MARCH='native -O0'"):
        scan_cpp.build_flags()


def fresh_load(env, build, which=lambda name: "/usr/bin/" + name):
    """scan_cpp.load() as in a new process, torch's builder replaced by `build`; returns the
    module and the ScanBuildNote messages."""
    for key, value in (("_TRIED", False), ("_MODULE", None), ("_ERROR", None),
                       ("BUILD_SECONDS", None)):
        env.setattr(scan_cpp, key, value)
    env.setattr("torch.utils.cpp_extension.load", build)
    env.setattr(scan_cpp.shutil, "which", which)       # a compiler and ninja "exist"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = scan_cpp.load()
    return module, [str(w.message) for w in caught if w.category is scan_cpp.ScanBuildNote]


def test_a_build_is_announced_once_before_and_after_and_a_cached_load_is_silent(env):
    calls = []

    def build(name, sources, build_directory, **kw):
        calls.append((name, sources, build_directory))
        return "module"

    module, notes = fresh_load(env, build)
    assert module == "module" and len(calls) == 1
    name, sources, folder = calls[0]
    assert name == scan_cpp.module_name() and folder == str(scan_cpp.build_dir())
    assert sources == [os.path.join(folder, scan_cpp.SOURCE.name)]   # the folder's copy
    assert len(notes) == 2
    assert notes[0].startswith("building the CPU scan kernel once for this environment")
    assert folder in notes[0]
    assert notes[1].startswith("built the CPU scan kernel in ") and notes[1].endswith(" s")
    # the CLI prints them as one "note: ..." line each
    line = _format_warning(notes[1], scan_cpp.ScanBuildNote, "scan_cpp.py", 1)
    assert line == f"note: {notes[1]}\n"
    # the library is cached: loading says nothing
    open(os.path.join(folder, f"{name}.so"), "w").close()
    module, notes = fresh_load(env, build)
    assert module == "module" and notes == [] and len(calls) == 2


def test_a_failed_build_says_so_and_no_compiler_stays_silent(env):
    def broken(**kw):
        raise RuntimeError("Error building extension 'x'\nsyntax error")

    module, notes = fresh_load(env, broken)
    assert module is None and scan_cpp.error() == "RuntimeError: syntax error"
    assert len(notes) == 2 and "could not be built (RuntimeError: syntax error)" in notes[1]
    assert "'chunked'" in notes[1]
    # no compiler: no build is tried, no note, the reason is kept for backend="cpp"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("CXX", "/nonexistent/c++")
        module, notes = fresh_load(env, broken, which=REAL_WHICH)
    assert module is None and notes == []
    assert "no C++ compiler: '/nonexistent/c++'" in scan_cpp.error()
    # a bad MTAD_SCAN_MARCH: no build, and a note naming the variable
    env.setenv(scan_cpp.MARCH_ENV, "x86 64")
    module, notes = fresh_load(env, broken)
    assert module is None and "MTAD_SCAN_MARCH" in scan_cpp.error()
    assert len(notes) == 1 and "MTAD_SCAN_MARCH='x86 64'" in notes[0]
