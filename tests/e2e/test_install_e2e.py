"""butter installed from the checkout into a fresh virtualenv, as `pip install <checkout>` does:
the wheel builds without setuptools deprecation warnings, the `butter` command runs with
`--version`, and the installed package finds its own addon script and Node preload.

Kept fast and offline: the wheel is built with this venv's setuptools (no build isolation,
so nothing is downloaded), and the fresh venv borrows this venv's third-party packages through
a path entry instead of installing them (its own site-packages comes first, so `butter` is the
installed copy, never the checkout).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from butter import cli
from tests.e2e.harness import ROOT

pytest.importorskip("setuptools", reason="the wheel is built offline with the test extras' setuptools")

SOURCES = ("butter", "addon", "store", "cli", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy: building in the checkout would leave build/ and egg-info behind
    source.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("butter-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # A path entry, not this venv's .pth files: its editable install of a checkout must not be seen.
    Path(purelib, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, built.stdout + built.stderr


def test_the_wheel_builds_without_setuptools_deprecation_warnings(installed):
    _, build_log = installed
    assert "SetuptoolsDeprecationWarning" not in build_log
    assert "deprecated" not in build_log.lower(), [l for l in build_log.splitlines() if "deprecat" in l.lower()]


def test_installed_butter_command_reports_its_version(installed, tmp_path: Path):
    venv, _ = installed
    done = subprocess.run([str(venv / "bin" / "butter"), "--version"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"butter {cli.__version__}"


def test_installed_package_finds_its_own_addon_script_and_node_preload(installed, tmp_path: Path):
    venv, _ = installed
    done = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "from butter.cli import proxy_process as p; print(p.addon_script()); print(p.PRELOAD)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    script, preload = (Path(line) for line in done.stdout.split())
    for path in (script, preload):
        assert path.is_file() and path.is_relative_to(venv), path


def test_installing_butter_adds_no_generic_top_level_module(installed, tmp_path: Path):
    venv, _ = installed
    probe = ("import importlib.util, json; print(json.dumps({n: importlib.util.find_spec(n) is not None "
             "for n in ('addon', 'store', 'cli', 'butter', 'butter.store', 'butter.addon.cache_addon')}))")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ('{"addon": false, "store": false, "cli": false, "butter": true, '
                                   '"butter.store": true, "butter.addon.cache_addon": true}')
