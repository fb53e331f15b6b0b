"""The wheel works outside a clone: built, installed into a fresh venv, run from a directory with no
repository in sight, the console scripts find the config tree inside the installed package
(``trustequiv_conf``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

# What the wheel is built from (a copy: an in-place build would leave build/ in the clone and could pick up
# stale files from an earlier one).
_SOURCES = ("pyproject.toml", "setup.py", "README.md", "trustequiv", "plugins", "conf")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(wheel, venv, an empty working directory): the wheel installed without dependencies into a new venv
    that sees this venv's packages through a .pth file (a plain path: the clone's editable-install hooks in
    there are not run, so ``trustequiv`` can only come from the wheel)."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in _SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        check=True,
        capture_output=True,
        env=env,
    )
    (wheel,) = (tmp / "dist").glob("trustequiv-*.whl")

    venv = tmp / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(venv_site) / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        env=env,
    )
    work = tmp / "elsewhere"
    work.mkdir()
    return wheel, venv, work


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_ships_the_config_tree(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert conf, "no configs in the repository's conf/"
    assert {f"trustequiv_conf/{p}" for p in conf} <= names
    assert {"trustequiv/cli.py", "trustequiv_conf/__init__.py", "plugins/compressors/__init__.py"} <= names


def test_console_script_help_outside_the_clone(installed):
    _, venv, work = installed
    proc = _run([str(venv / "bin" / "trustequiv-evaluate"), "--help"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Configuration groups" in out, out
    for group in ("model:", "task:", "characteristic:", "compressor:", "experiment:"):
        assert group in out, out
    assert "offline_minilm" in out and "mrpc" in out
    # A bad option ends in the one error line (trustequiv.user_errors.run around the console script).
    bad = _run([str(venv / "bin" / "trustequiv-evaluate"), "characteristic=[calibrat]"], cwd=work)
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines()[-1].startswith("error: "), bad.stderr[-3000:]


def test_config_registry_reads_the_installed_package(installed):
    _, venv, work = installed
    # The job names (run dirs outputs/<job>/...) come from the configs, not from trustequiv/cli.py's name.
    code = (
        "import trustequiv, trustequiv.conf_tree as c\n"
        "from hydra import compose, initialize_config_module\n"
        "print(trustequiv.__file__); print(c.CONF_DIR); print(','.join(c.available('task')))\n"
        "with initialize_config_module(c.CONF_PACKAGE, version_base='1.3'):\n"
        "    jobs = [compose(n, return_hydra_config=True).hydra.job.name for n in ('evaluate', 'train')]\n"
        "print(','.join(jobs))\n"
    )
    proc = _run([str(venv / "bin" / "python"), "-c", code], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, conf_dir, tasks, jobs = proc.stdout.strip().splitlines()[-4:]
    assert jobs == "evaluate,train"
    assert Path(module).resolve().is_relative_to(venv.resolve()), module
    assert Path(conf_dir).resolve().is_relative_to(venv.resolve()), conf_dir
    assert Path(conf_dir).name == "trustequiv_conf"
    expected = sorted(
        p.relative_to(REPO / "conf" / "task").with_suffix("").as_posix()
        for p in (REPO / "conf" / "task").rglob("*.yaml")
    )
    assert tasks.split(",") == expected
