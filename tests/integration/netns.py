"""Linux network namespaces as stand-in hosts for integration tests.

Theory of operation. :class:`Network` builds a small LAN out of namespaces:
one *switch* namespace holding a bridge (``br0``), and one namespace per
host, each with a single interface ``eth0`` (one end of a veth pair whose
other end is a bridge port in the switch namespace) and an address on the
subnet (10.77.0.0/24 unless told otherwise). Hosts reach each other only
over the bridge; each has its own loopback, so a daemon that talks to
127.0.0.1 reaches nothing but its own host.

Nothing is added to the root namespace: no link, no address, no route. Every
link lives in one of our namespaces, so deleting the namespaces removes the
links with them. Names carry a per-run token (``sfmh<pid><random>-<role>``),
so runs side by side, or namespaces an interrupted run left behind, never
clash: each run's switch is a separate L2 segment, and the same subnet can be
reused by all of them.

:meth:`Network.close` undoes everything even after a partial setup: it
SIGKILLs whatever still runs inside our namespaces (only processes started
there by this run can be there), deletes the namespaces, and checks they are
gone. Every ``ip`` call has a timeout and fails with its stderr.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Host", "NetnsError", "Network", "established_peers", "unavailable_reason"]

_IP_TIMEOUT = 30.0
#: ``ip`` is in /usr/sbin or /sbin, which a non-login root shell's PATH may lack.
IP = shutil.which("ip") or next(
    (path for path in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.access(path, os.X_OK)), None
)


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message holds the command and its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if IP is None:
        raise NetnsError("the 'ip' tool (iproute2) is not installed")
    command = [IP, *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_IP_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"{' '.join(command)} did not finish within {_IP_TIMEOUT:.0f} s") from exc
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """Why namespaces joined by a veth bridge cannot be built here, or None if they can.

    Checks the platform, root, the ``ip`` tool, and then actually builds and removes a tiny
    probe (two namespaces, a bridge, a veth pair), since containers often lack the capabilities.
    """
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root to create network namespaces, veth pairs and a bridge (CI runs it as root)"
    if IP is None:
        return "the 'ip' tool (iproute2) is not installed"
    probe = None
    try:
        probe = Network(subnet="10.77.0")
        probe.add_host("probe", 2)
    except NetnsError as exc:
        return f"cannot build network namespaces joined by a veth bridge here: {exc}"
    finally:
        if probe is not None:
            try:
                probe.close()
            except NetnsError:
                pass
    return None


@dataclass(frozen=True)
class Host:
    """One namespace on the LAN: ``role`` is ours, ``namespace`` the kernel's name, ``address`` its IPv4 address."""

    role: str
    namespace: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` execs it: same PID, signals reach it)."""
        return [IP or "ip", "netns", "exec", self.namespace, *argv]


class Network:
    """A bridge in a switch namespace, and hosts (namespaces) plugged into it. Call :meth:`close` when done."""

    def __init__(self, subnet: str = "10.77.0", prefix: str | None = None) -> None:
        #: the first three octets; hosts get ``subnet.N/24``
        self.subnet = subnet
        self.prefix = prefix or f"sfmh{os.getpid()}{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-switch"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._closed = False
        try:
            self._add_namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)  # only once it exists: close() deletes exactly what we made

    def add_host(self, role: str, number: int) -> Host:
        """A new namespace with ``eth0`` = ``subnet.number/24`` on the bridge, and its loopback up."""
        if role in self.hosts:
            raise ValueError(f"host {role!r} exists already")
        if not 1 <= number <= 254:
            raise ValueError(f"host number {number} is not in 1..254")
        namespace = f"{self.prefix}-{role}"
        host = Host(role, namespace, f"{self.subnet}.{number}")
        self._add_namespace(namespace)
        port = f"p{number}"  # bridge port in the switch namespace (names are per namespace, so short ones do)
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        self.hosts[role] = host
        return host

    def pids(self) -> dict[str, list[int]]:
        """The processes running inside each of our namespaces, by namespace."""
        found = {}
        for name in self._namespaces:
            result = _ip("netns", "pids", name, check=False)
            found[name] = [int(pid) for pid in result.stdout.split()]
        return found

    def close(self) -> None:
        """Kill what still runs in our namespaces, delete them (and with them every link), check they are gone."""
        if self._closed:
            return
        self._closed = True
        problems = []
        for name, pids in self.pids().items():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                problems.append(f"process {pid} was still running in {name} (killed)")
        for name in reversed(self._namespaces):  # hosts first, the switch last
            try:
                _ip("netns", "delete", name)
            except NetnsError as exc:
                problems.append(str(exc))
        left = set(_ip("netns", "list", check=False).stdout.split()) & set(self._namespaces)
        if left:
            problems.append(f"namespaces still listed after deletion: {sorted(left)}")
        self._namespaces.clear()
        if problems:
            raise NetnsError("; ".join(problems))


def established_peers(pid: int, port: int) -> set[str]:
    """The IPv4 addresses with an established TCP connection to local ``port``, as seen in ``pid``'s network
    namespace (its ``/proc/PID/net/tcp``, so no tool is needed and nothing runs inside the namespace)."""

    def address(field: str) -> tuple[str, int]:
        host, port_hex = field.split(":")
        return socket.inet_ntoa(struct.pack("<I", int(host, 16))), int(port_hex, 16)

    peers = set()
    with open(f"/proc/{pid}/net/tcp") as table:
        next(table)  # header
        for line in table:
            fields = line.split()
            if fields[3] == "01" and address(fields[1])[1] == port:  # 01: ESTABLISHED
                peers.add(address(fields[2])[0])
    return peers
