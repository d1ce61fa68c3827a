"""Start Azurite (the Azure Storage emulator from npm) on loopback ports.

The tests and the benchmarks start it on port 0: Azurite takes free ports itself and says which, so
no other process can take a port between its choice and Azurite's listen (a port chosen by a probe
and bound later can be, and the kernel may hand one probe's port to the next). ``make run``
(``leads/local/local_run.py``) starts it on the usual ones, 10000 to 10002, or those it is told. Azurite
comes from ``node_modules`` (``npm install`` with the repo's package.json).

A port that answers is not proof that *this* Azurite listens on it: another emulator may hold it
while ours exits with ``EADDRINUSE``. So :meth:`Azurite.start` waits for Azurite's own
"successfully listening" line for each of its ports, and reports the port it could not take.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


# Azurite prints one of these per service once it listens (the port it took, when given 0), then
# nothing more with --silent.
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at https?://[^\s:]+:(\d+)")
_IN_USE = re.compile(r"EADDRINUSE\b.*?:(\d+)\s*$", re.MULTILINE)


class AzuriteError(RuntimeError):
    """Azurite exited before it listened. ``port_in_use`` is the port it found taken, if that
    was the reason."""

    def __init__(self, message: str, port_in_use: int | None = None) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different ports free now. Held together while chosen: one at a time, the kernel
    may hand out the port it just took back (about one group of four in 2,000 had a repeat)."""
    with contextlib.ExitStack() as held:
        probes = [held.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now. Binds as servers do (SO_REUSEADDR,
    so a port a stopped server left in TIME_WAIT counts as free); a listener on any address of
    the port, or on ::1 where ``localhost`` may lead first, makes it taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return not _listening(port, "::1")


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
    """One Azurite process, on the ports it is given; a port left 0 is one Azurite chooses, known
    once :meth:`start` returns. ``stop()`` and ``start()`` again keep its ports (and, with a
    ``location``, its data), which lets tests take storage away and bring it back."""

    location: Path | None = None
    blob_port: int = 0
    queue_port: int = 0
    table_port: int = 0
    # ``make run``: Azurite in a session of its own, so that the terminal's Ctrl+C reaches the app
    # first and the app stops Azurite after its last invocation; on Linux it also dies with the
    # thread that started it (PR_SET_PDEATHSIG), so a killed ``make run`` leaves no Azurite behind.
    own_session: bool = False
    # HTTPS with this certificate and key (PEM files), and bearer tokens accepted (``--oauth basic``:
    # Azurite checks a token's audience, issuer and lifetime, not its signature), for benchmarks
    # of identity-based storage; the connection string then has no use.
    cert: Path | None = None
    key: Path | None = None
    oauth: bool = False
    process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        if 0 in (self.blob_port, self.queue_port, self.table_port):
            raise RuntimeError("Azurite chooses its ports when it starts: start it first")
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def start(self, timeout: float = 30.0) -> Azurite:
        args = [
            _executable(),
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--blobPort",
            str(self.blob_port),
            "--queuePort",
            str(self.queue_port),
            "--tablePort",
            str(self.table_port),
        ]
        if self.cert and self.key:
            args += ["--cert", str(self.cert), "--key", str(self.key)] + ["--oauth", "basic"] * self.oauth
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=os.environ.copy(),
            start_new_session=self.own_session,
            preexec_fn=_die_with_parent if self.own_session and sys.platform == "linux" else None,
        )
        try:
            self._wait_until_listening(timeout)
        except BaseException:
            self.stop()
            raise
        # Nothing reads its output from here on: drain it, so a full pipe can never stall Azurite.
        threading.Thread(target=self.process.stdout.read, name="azurite-stdout", daemon=True).start()
        return self

    def _wait_until_listening(self, timeout: float) -> None:
        """Return once Azurite says it listens for each of its services, with the ports it took;
        AzuriteError if it exits."""
        assert self.process is not None and self.process.stdout is not None
        waiting = {"Blob", "Queue", "Table"}
        deadline = time.monotonic() + timeout
        output = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"Azurite's {', '.join(sorted(waiting))} did not listen within {timeout:g}s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:  # it exited
                    self.process.wait()
                    errors = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
                    in_use = _IN_USE.search(errors)
                    reason = errors.splitlines()[-1] if errors else f"exit code {self.process.returncode}"
                    raise AzuriteError(f"Azurite exited: {reason}", int(in_use.group(1)) if in_use else None)
                output += chunk
                for service, port in _LISTENING.findall(output.decode(errors="replace")):
                    setattr(self, f"{service.lower()}_port", int(port))
                    waiting.discard(service)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.settimeout(0.2)
            return s.connect_ex((host, port)) == 0
    except OSError:  # no IPv6 on this machine
        return False


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started Azurite dies,
    however it dies, so no Azurite is left holding the ports."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
