"""Shared fixtures for the end-to-end tests: paths of the built binaries and
a private HOME per test, so nothing touches the real user's mail."""

import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


def binary(name):
    path = TARGET / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first")
    return path


class Env:
    """A private HOME with helpers to write a config and run the daemon."""

    def __init__(self, home):
        self.home = home
        self.env = dict(os.environ, HOME=str(home))
        self.env.pop("RUST_LOG", None)

    def write_cfg(self, text, name="cms.cfg"):
        path = self.home / name
        path.write_text(text)
        return path

    def run(self, *args, check=True, timeout=120):
        proc = subprocess.run(
            [str(binary("cloud-mdir-sync")), *args],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"cloud-mdir-sync {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def check(self):
        return json.loads(self.run("--check").stdout)


@pytest.fixture
def cms(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return Env(home)
