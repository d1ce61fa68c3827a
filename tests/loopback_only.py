"""Imported first by a test's child process: no connection and no name lookup leaves this machine.

The Azure Monitor exporter, its statsbeat, live metrics, control plane and resource detectors all
know addresses of their own (Microsoft endpoints, the instance metadata service). A test that runs
them must prove that nothing reached out: every connection or lookup of a non-loopback address is
refused here and named on stderr, where the test looks for ``NOT LOOPBACK``.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths and the like stay on this machine
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str, host: object) -> None:
    print(f"NOT LOOPBACK: {what} {host!r} refused", file=sys.stderr, flush=True)
    raise OSError(f"{host!r} is not a loopback address (tests/loopback_only.py)")


def connect(self: socket.socket, address):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        _refuse("connection to", address[0])
    return _connect(self, address)


def connect_ex(self: socket.socket, address):  # type: ignore[no-untyped-def]
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        _refuse("connection to", address[0])
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if host is not None and not _is_loopback(host.decode() if isinstance(host, bytes) else host):
        _refuse("name lookup of", host)
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
