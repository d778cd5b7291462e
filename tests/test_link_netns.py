"""The kernel path: two network namespaces, veth, tc tbf. Skipped (with the reason) where it cannot run."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import pytest

from slimsplit.errors import ConfigError
from slimsplit.link.netns import NetnsConfig, NetnsLink, kernel_path_available

OK, WHY = kernel_path_available()

SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
c.sendall(f"{n} {h.hexdigest()}".encode()); c.close()
"""

CLIENT = """
import os, socket, sys, time
data = bytes(range(256)) * (int(sys.argv[2]) // 256)
c = socket.create_connection((sys.argv[1], 9000), timeout=30)
t = time.monotonic(); c.sendall(data); c.shutdown(socket.SHUT_WR)
reply = c.recv(200).decode(); print(f"{time.monotonic() - t:.4f} {reply}")
"""


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        NetnsConfig(up_rate_bps=0)
    assert NetnsConfig(up_rate_bps=8e6).burst_for(8e6) == 4000


@pytest.mark.netns
@pytest.mark.skipif(not OK, reason=f"kernel link path unavailable: {WHY}")
def test_tbf_shapes_a_real_tcp_transfer_and_namespaces_are_removed() -> None:
    rate = 4e6
    nbytes = 256 * 2000  # 512,000 B: about 1 s at 4 Mbit/s
    cfg = NetnsConfig(up_rate_bps=rate)
    with NetnsLink(cfg) as link:
        server = link.popen("b", [sys.executable, "-c", SERVER, link.addr_b], stdout=subprocess.PIPE)
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == b"ready"
            out = link.run("a", [sys.executable, "-c", CLIENT, link.addr_b, str(nbytes)], timeout=60)
            assert out.returncode == 0, out.stderr
            elapsed, n, digest = out.stdout.decode().split()
        finally:
            server.wait(10)
            if server.stdout is not None:
                server.stdout.close()
        names = (link.ns_a, link.ns_b)
    expected = hashlib.sha256(bytes(range(256)) * 2000).hexdigest()
    assert int(n) == nbytes and digest == expected
    # a token bucket cannot deliver faster than its rate (beyond the initial burst): a lower bound on time
    floor = (nbytes - cfg.burst_for(rate)) * 8 / rate
    assert float(elapsed) >= 0.9 * floor, (elapsed, floor)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in listed for ns in names)


@pytest.mark.netns
@pytest.mark.skipif(not OK, reason=f"kernel link path unavailable: {WHY}")
def test_namespaces_are_removed_after_an_error() -> None:
    link = NetnsLink(NetnsConfig(up_rate_bps=1e6))
    with pytest.raises(RuntimeError), link:
        names = (link.ns_a, link.ns_b)
        raise RuntimeError("boom")
    time.sleep(0.05)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in listed for ns in names)
