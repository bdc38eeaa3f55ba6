"""Fixtures: a real coordinator (`server serve` on a random port, its own SQLite file) and real
`worker run --allow-commands` processes, started and stopped per test. No mocks of the
coordinator: the package is tested against the binaries `cargo build` made."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
TOKEN = "admin-token"
WORKER_TOKEN = "worker-token"
#: How long a test waits for progress before it fails (progress, not fixed seconds, is waited for).
PATIENCE = 120.0


def binary(name: str) -> Path:
    path = TARGET / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build -p server -p worker --bins` (make test does)")
    return path


class Coordinator:
    def __init__(self, tmp: Path, lease_seconds: int = 30) -> None:
        self.proc = subprocess.Popen(
            [str(binary("server")), "serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--worker-token", WORKER_TOKEN,
             "--lease-seconds", str(lease_seconds), "--db", str(tmp / "sweeps.db")],
            stdout=subprocess.PIPE, stderr=open(tmp / "server.log", "w"), text=True,
        )
        first = self.proc.stdout.readline() if self.proc.stdout else ""
        if not first.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the coordinator did not start: {first!r} (see {tmp / 'server.log'})")
        self.url = first.strip()[len("listening on "):]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Workers:
    """`worker run` processes, killed at the end of the test whatever happened."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp, self.procs = url, tmp, []  # type: ignore[var-annotated]

    def start(self, name: str, *extra: str) -> subprocess.Popen:
        work = self.tmp / name
        work.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [str(binary("worker")), "run", "--server", self.url, "--token", TOKEN, "--heartbeat-seconds", "0.5",
             "--idle-seconds", "0.2", "--work-dir", str(work), "--allow-commands", "--command-root", str(SCRIPTS),
             "--stop-grace-seconds", "2", *extra],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"{name}.log", "w"),
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def workers(coordinator: Coordinator, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(coordinator.url, tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


@pytest.fixture
def client(coordinator: Coordinator):
    import seed_sweeps

    return seed_sweeps.Client(coordinator.url, TOKEN)


def wait_for(what: str, check, patience: float = PATIENCE, poll: float = 0.05):
    """Poll `check()` until it returns something truthy; fail after `patience` s without it."""
    deadline = time.monotonic() + patience
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"waited {patience} s for {what}")
        time.sleep(poll)


def job_argv(*args: str) -> List[str]:
    """A command job running tests/scripts/train_job.py with this interpreter (which has the package)."""
    return [sys.executable, "train_job.py", *args]
