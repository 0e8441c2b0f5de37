"""scripts/setup-env.sh on a machine whose only Python is too old: a clear message, no half-made venv."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash")
DIRNAME = shutil.which("dirname")


@pytest.mark.skipif(BASH is None or DIRNAME is None, reason="needs bash and dirname")
def test_setup_env_with_only_an_old_python_says_which_python_it_needs(tmp_path: Path):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup-env.sh", tmp_path / "scripts" / "setup-env.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(DIRNAME)
    old = bin_dir / "python3"  # answers the version check the way a Python 3.11 does: "too old"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    done = subprocess.run([BASH, str(tmp_path / "scripts" / "setup-env.sh")], cwd=tmp_path,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "butter needs Python >= 3.12" in done.stderr
    assert "command not found" not in done.stderr
    assert not (tmp_path / ".venv").exists()
