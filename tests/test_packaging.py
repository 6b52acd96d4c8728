"""The shipped form: a wheel built from this tree, installed into a fresh virtual environment,
runs every program (`--help` and a smoke start of each), importing nothing from the source tree.
A package missing from the wheel (the image once could not run `python -m gateway`) fails here."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from devkit import harness

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("webhook", "sds_sidecar", "gateway")
SCRIPTS = ("sds-webhook", "sds-agent", "sds-gateway")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A venv holding only the wheel; third-party libraries are borrowed from the test venv by a
    plain path entry (a .pth line adds the directory, not the .pth files in it, so the source
    tree's editable install is not visible)."""
    work = tmp_path_factory.mktemp("pkg")
    # Built from the source alone, as a clone has it: never from a stale build/ or egg-info.
    src, dist = work / "src", work / "dist"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(dist)],
                   check=True, capture_output=True, timeout=300)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "borrowed-deps.pth").write_text("\n".join(paths) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(next(dist.glob("*.whl")))], check=True, capture_output=True, timeout=300)
    return venv, work


def run(venv: Path, cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_every_program_comes_from_the_wheel(fresh):
    venv, work = fresh
    py = str(venv / "bin" / "python")
    r = run(venv, work, py, "-c", "import json, sds_core, webhook, sds_sidecar, gateway; print(json.dumps("
            "[m.__file__ for m in (sds_core, webhook, sds_sidecar, gateway)]))")
    assert r.returncode == 0, r.stderr
    for f in json.loads(r.stdout):
        assert f.startswith(str(venv)), f"{f} was not imported from the installed wheel"


@pytest.mark.parametrize("argv", [*([p, "--help"] for p in PROGRAMS)])
def test_each_program_answers_help(fresh, argv):
    venv, work = fresh
    r = run(venv, work, str(venv / "bin" / "python"), "-m", *argv)
    assert r.returncode == 0 and "usage" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_console_script_answers_help(fresh, script):
    venv, work = fresh
    r = run(venv, work, str(venv / "bin" / script), "--help")
    assert r.returncode == 0 and "usage" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def test_smoke_starts(fresh, tmp_path):
    venv, work = fresh
    py = str(venv / "bin" / "python")
    # The webhook's offline injection of a shipped example.
    r = run(venv, work, py, "-m", "webhook", "inject", "-f", str(ROOT / "examples" / "shop-prod.yaml"),
            "--config", str(ROOT / "examples" / "config.yaml"))
    assert r.returncode == 0 and "sds-agent" in r.stdout, r.stderr
    # The gateway's Envoy bootstrap.
    r = run(venv, work, py, "-m", "gateway", "bootstrap", "--agent-socket", str(tmp_path / "gw.sock"))
    assert r.returncode == 0 and json.loads(r.stdout)["dynamic_resources"], r.stderr
    # The agent serves on its socket until SIGTERM, then exits 0 and removes it.
    sock = tmp_path / "sds.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
    agent = subprocess.Popen([str(venv / "bin" / "sds-agent"), "serve", "--source", "local-ca", "--socket-path",
                              str(sock), "--certificates", "a", "--trust-bundles", "b", "--http-port", "0"],
                             cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        harness.wait_for(sock.exists, 30, what="the installed agent's socket")
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=30)
    assert agent.returncode == 0, out
    assert not sock.exists()


def test_the_image_copies_every_package_the_wheel_holds():
    """The Dockerfile builds from the source it copies: a package left out (gateway/ was, until
    the one-shape redesign) is missing from the image whatever pyproject.toml says."""
    import re
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = set(re.findall(r"^COPY\s+(\w+)\s", (ROOT / "Dockerfile").read_text(), re.M))
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
