"""Start Azurite (the Azure Storage emulator from npm) on free loopback ports.

Used by the tests and the benchmarks; ``make run`` starts it on the usual ports instead. Azurite
comes from ``node_modules`` (``npm install`` with the repo's package.json).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_string(blob_port: int, queue_port: int, table_port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob_port}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{queue_port}/{ACCOUNT};"
        f"TableEndpoint=http://127.0.0.1:{table_port}/{ACCOUNT};"
    )


def _executable() -> str:
    local = REPO / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise FileNotFoundError("Azurite is not installed: run `npm install` in the repository")


@dataclass
class Azurite:
    """One Azurite process. ``stop()`` and ``start()`` again keep its ports (and, with a
    ``location``, its data), which lets tests take storage away and bring it back."""

    location: Path | None = None
    blob_port: int = 0
    queue_port: int = 0
    table_port: int = 0
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.blob_port = self.blob_port or free_port()
        self.queue_port = self.queue_port or free_port()
        self.table_port = self.table_port or free_port()

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def start(self, timeout: float = 30.0) -> "Azurite":
        args = [
            _executable(),
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--blobPort", str(self.blob_port),
            "--queuePort", str(self.queue_port),
            "--tablePort", str(self.table_port),
        ]  # fmt: skip
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy()
        )
        try:
            wait_until_listening(self.blob_port, self.queue_port, self.table_port, timeout=timeout, process=self.process)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until_listening(*ports: int, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Return once every port accepts connections on loopback (``make run`` waits for Azurite)."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while not _listening(port):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"Azurite exited: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout}s")
            time.sleep(0.05)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
