"""The kernel path (Linux, root): two network namespaces joined by a veth pair, each end shaped by ``tc tbf``.

For fixed rates this is the real kernel's TCP over a real qdisc, independent of Python timers. Only ``tbf``/``htb``
are assumed (no ``netem``), so there is no propagation delay here: use the proxy for traces and delays.

    with NetnsLink(NetnsConfig(up_rate_bps=8e6)) as link:      # requires root, `ip`, `tc`
        server = link.popen("b", [sys.executable, "-m", "http.server", "--bind", link.addr_b, "8000"])
        link.run("a", ["curl", f"http://{link.addr_b}:8000/"])

Addresses live only inside the two namespaces this creates (``10.213.<n>.1`` in ``a``, ``.2`` in ``b``); both
namespaces (and with them the veth pair and qdiscs) are deleted on exit, also after errors.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from slimsplit.errors import ConfigError, Unavailable

_COUNTER = itertools.count()


def kernel_path_available() -> tuple[bool, str]:
    """Whether this process can build the kernel path, and if not, why."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"the {tool!r} command is not installed (iproute2)"
    probe = f"ssprobe{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, timeout=10)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        return False, f"cannot create network namespaces here: {_stderr(exc)}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return True, ""


def _stderr(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
        return err.strip() or str(exc)
    return str(exc)


@dataclass(frozen=True)
class NetnsConfig:
    up_rate_bps: float  # a -> b
    down_rate_bps: float | None = None  # b -> a (None = unshaped)
    burst_bytes: int = 0  # tbf bucket; 0 = max(2 MTU, rate / 250 Hz)
    latency_ms: float = 200.0  # tbf queue bound, expressed as a waiting time

    def __post_init__(self) -> None:
        if self.up_rate_bps <= 0 or (self.down_rate_bps is not None and self.down_rate_bps <= 0):
            raise ConfigError("netns link rates must be positive")
        if self.burst_bytes < 0 or self.latency_ms <= 0:
            raise ConfigError("netns burst must be >= 0 and latency > 0")

    def burst_for(self, rate_bps: float) -> int:
        return self.burst_bytes or max(3000, int(rate_bps / 8 / 250))


class NetnsLink:
    """Context manager that builds and always tears down the namespaces (see the module docstring)."""

    def __init__(self, config: NetnsConfig) -> None:
        self.config = config
        n = next(_COUNTER)
        tag = f"{os.getpid() % 100000}x{n}"
        self.ns_a, self.ns_b = f"ssa{tag}", f"ssb{tag}"
        self.dev_a, self.dev_b = f"ssva{tag}"[:15], f"ssvb{tag}"[:15]
        octet = (os.getpid() + n) % 250 + 1
        self.addr_a, self.addr_b = f"10.213.{octet}.1", f"10.213.{octet}.2"
        self._created: list[str] = []

    def __enter__(self) -> NetnsLink:
        ok, why = kernel_path_available()
        if not ok:
            raise Unavailable(f"kernel link path unavailable: {why}")
        try:
            for ns in (self.ns_a, self.ns_b):
                self._ip("netns", "add", ns)
                self._created.append(ns)
            self._ip("link", "add", self.dev_a, "type", "veth", "peer", "name", self.dev_b)
            self._ip("link", "set", self.dev_a, "netns", self.ns_a)
            self._ip("link", "set", self.dev_b, "netns", self.ns_b)
            for ns, dev, addr in ((self.ns_a, self.dev_a, self.addr_a), (self.ns_b, self.dev_b, self.addr_b)):
                self._ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                self._ip("-n", ns, "link", "set", dev, "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
            cfg = self.config
            self._tbf(self.ns_a, self.dev_a, cfg.up_rate_bps)
            if cfg.down_rate_bps is not None:
                self._tbf(self.ns_b, self.dev_b, cfg.down_rate_bps)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Delete the namespaces (removes the veth pair and qdiscs with them). Idempotent."""
        while self._created:
            ns = self._created.pop()
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)

    # ------------------------------------------------------------------ helpers
    def _ip(self, *args: str) -> None:
        try:
            subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)
        except subprocess.CalledProcessError as exc:
            raise Unavailable(f"ip {' '.join(args)} failed: {_stderr(exc)}") from exc

    def _tbf(self, ns: str, dev: str, rate_bps: float) -> None:
        burst = self.config.burst_for(rate_bps)
        cmd = [
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            f"{int(rate_bps)}bit",
            "burst",
            str(burst),
            "latency",
            f"{self.config.latency_ms:g}ms",
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        except subprocess.CalledProcessError as exc:
            raise Unavailable(f"tc tbf failed (does this kernel have sch_tbf?): {_stderr(exc)}") from exc

    def _argv(self, side: str, argv: Sequence[str]) -> list[str]:
        if side not in {"a", "b"}:
            raise ConfigError(f"side must be 'a' or 'b', got {side!r}")
        return ["ip", "netns", "exec", self.ns_a if side == "a" else self.ns_b, *argv]

    def run(self, side: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside namespace ``side`` ('a' = edge side, 'b' = server side)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        result: subprocess.CompletedProcess[bytes] = subprocess.run(self._argv(side, argv), check=False, **kwargs)
        return result

    def popen(self, side: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a command inside namespace ``side``; the caller terminates it before the link closes."""
        return subprocess.Popen(self._argv(side, argv), **kwargs)


__all__ = ["NetnsConfig", "NetnsLink", "kernel_path_available"]
