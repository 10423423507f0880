#!/usr/bin/env python3
"""Set-up and tasks in one file, needing only Python 3.11+: it creates .venv and installs what it needs.

python3 tasks.py demo [demo options]   run the demo (simulated camera -> archiver on loopback Zenoh)
python3 tasks.py test                  lint (ruff), type-check (mypy) and run the whole test suite
python3 tasks.py bench [options]       run the benchmark matrix (benchmarks/README.md)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def ensure_env() -> None:
    """Create .venv and install the package with its dev extras, again whenever pyproject.toml changed."""
    stamp = VENV / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print("creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"])
    stamp.write_text(wanted)


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        raise SystemExit(code)


def test(args: list[str]) -> None:
    run([str(BIN / "ruff"), "check", "src", "tests", "benchmarks", "tasks.py"])
    run([str(BIN / "ruff"), "format", "--check", "src", "tests", "benchmarks", "tasks.py"])
    run([str(BIN / "mypy")])
    cmd = [str(PYTHON), "-m", "pytest", *args]
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code == 5:
        print("pytest collected no tests: that is a failure", file=sys.stderr)
    raise SystemExit(code)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "bench"):
        raise SystemExit(__doc__)
    task, args = sys.argv[1], sys.argv[2:]
    ensure_env()
    if task == "test":
        test(args)
    elif task == "demo":
        run([str(BIN / "heros-archiver"), "demo", *args])
    else:
        run([str(PYTHON), str(ROOT / "benchmarks" / "bench.py"), *args])


if __name__ == "__main__":
    main()
