"""scripts/setup on its failure paths, in a scratch copy of the repository (no install, no network).

The slow path (a fresh .venv: torch, `pip install -e`, the model) is what CI itself runs through
`.ci/run`; these tests cover what a fresh machine would otherwise only find out the hard way: a bad
extra, a requirement pip rejects, a failing step, two setups at once.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("setup", "serve", "test", "setup-vllm", "_steps.sh")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A scratch copy of what scripts/setup reads: its scripts, pyproject.toml, README.md and the package."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    shutil.copytree(ROOT / "segcache", copy / "segcache", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    return copy


def run_setup(repo: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "scripts" / "setup"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def start_setup(repo: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(repo / "scripts" / "setup")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_extra_stops_setup_before_anything_changes(repo):
    result = run_setup(repo, SEGCACHE_EXTRAS="no-such-extra")
    assert result.returncode == 2
    assert "the extra 'no-such-extra', which pyproject.toml does not define (it defines: test, bench)" in result.stderr
    assert "try: SEGCACHE_EXTRAS=bench bash scripts/setup" in result.stderr
    assert not (repo / ".venv").exists()


@pytest.mark.parametrize("extras, requirement", [
    ("", ".[test]"),
    ("bench", ".[test,bench]"),
    (" bench , test,bench", ".[test,bench]"),
])
def test_extras_join_into_one_requirement(repo, extras, requirement):
    result = run_setup(repo, "--print-requirement", SEGCACHE_EXTRAS=extras)
    assert result.returncode == 0, result.stderr
    assert result.stdout == requirement + "\n"
    assert not (repo / ".venv").exists()


def pip_dry_run(repo: Path, requirement: str) -> subprocess.CompletedProcess:
    """Ask pip whether it would install `-e requirement`, building only the project's metadata."""
    offline = ["--no-index", "--no-build-isolation"] if _has_setuptools() else []
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                           "--disable-pip-version-check", *offline, "--report", str(repo / "report.json"),
                           "-e", requirement], cwd=repo, capture_output=True, text=True, timeout=300)


def test_pip_accepts_the_bench_requirement(repo):
    requirement = run_setup(repo, "--print-requirement", SEGCACHE_EXTRAS="bench").stdout.strip()
    result = pip_dry_run(repo, requirement)
    assert result.returncode == 0, result.stderr
    [install] = json.loads((repo / "report.json").read_text())["install"]
    assert install["metadata"]["name"] == "segcache"
    assert sorted(install["requested_extras"]) == ["bench", "test"]
    assert {"bench", "test"} <= set(install["metadata"]["provides_extra"])


def test_pip_rejects_extras_joined_outside_the_brackets(repo):
    """The line an earlier setup built for SEGCACHE_EXTRAS=bench, and why the dry run above matters."""
    result = pip_dry_run(repo, ".[test],bench")
    assert result.returncode != 0
    assert "not a valid editable requirement" in result.stderr


def test_a_failing_install_step_stops_setup_with_the_tools_message(repo):
    # A real virtualenv without pip: the torch step's `python -m pip` fails as it would on a broken machine.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True)
    result = run_setup(repo)
    assert result.returncode == 1
    assert "segcache setup: installing torch 2.13.0" in result.stdout
    assert "No module named pip" in result.stderr
    assert "segcache setup: FAILED while installing torch 2.13.0" in result.stderr
    assert "segcache setup: try: " in result.stderr
    assert not (repo / ".venv" / ".segcache-install").exists()


@pytest.mark.skipif(shutil.which("flock") is None, reason="the lock needs flock(1)")
def test_a_second_setup_waits_for_the_first(repo):
    (repo / ".venv").mkdir()
    with open(repo / ".venv" / ".setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # a first setup, mid-way
        second = start_setup(repo, PYTHON="no-such-python")
        assert "another setup of .venv is running; waiting" in second.stdout.readline()
        time.sleep(0.5)
        assert second.poll() is None, "the second setup went on while the first held the lock"
    # The first is done: the second goes on, to the step it fails at here (no interpreter).
    _, stderr = second.communicate(timeout=30)
    assert second.returncode == 1
    assert "no 'no-such-python' on PATH to create .venv with" in stderr


def _has_setuptools() -> bool:
    """With setuptools at hand, pip builds the metadata offline; without, it fetches setuptools from PyPI."""
    return importlib.util.find_spec("setuptools") is not None
