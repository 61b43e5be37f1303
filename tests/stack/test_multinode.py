"""Checks of the stack's multi-node LiveKit (`STACK_LIVEKIT_NODES=2 scripts/stack up`).

Skipped when the stack runs one LiveKit node. What the nodes do together (rooms spread over
them, calls across them) is crates/lab/tests/livekit_nodes.rs; this file checks what the
stack itself promises: every node answers, Redis is private (password, loopback, nothing on
disk), and no secret is on a command line or in a file others can read.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack"


def stack(*args):
    return subprocess.run([sys.executable, str(STACK), *args], capture_output=True, text=True,
                          timeout=120, cwd=str(REPO))


@pytest.fixture(scope="module")
def env():
    r = stack("env")
    assert r.returncode == 0, r.stderr
    import shlex
    out = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition("=")
        out[key] = " ".join(shlex.split(value))
    if "LIVEKIT_NODE_URLS" not in out:
        pytest.skip("the stack runs one LiveKit node (STACK_LIVEKIT_NODES=2 for these checks)")
    return out


def redis(addr: str, *commands: list[str]) -> list[bytes]:
    """Raw RESP: each command's first reply line."""
    host, port = addr.rsplit(":", 1)
    payload = b""
    for cmd in commands:
        payload += f"*{len(cmd)}\r\n".encode()
        for a in cmd:
            payload += f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(payload)
        f = s.makefile("rb")
        return [f.readline().rstrip(b"\r\n") for _ in commands]


def test_every_node_answers_and_status_lists_them(env):
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    urls = env["LIVEKIT_NODE_HTTP_URLS"].split()
    assert len(urls) == int(env["STACK_LIVEKIT_NODES"]) >= 2
    assert urls[0] == env["LIVEKIT_HTTP_URL"]
    for url in urls:
        with opener.open(url + "/", timeout=5) as resp:
            assert resp.read().strip() == b"OK"
    r = stack("status")
    assert r.returncode == 0, r.stdout + r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines() if " running " in line]
    assert "redis" in names and "livekit" in names and "livekit-2" in names, r.stdout


def test_redis_refuses_commands_without_the_password(env):
    addr = env["LIVEKIT_REDIS_ADDRESS"]
    assert addr.startswith("127.0.0.1:")
    assert redis(addr, ["HKEYS", "nodes"])[0].startswith(b"-NOAUTH"), "no password, no data"
    wrong = redis(addr, ["AUTH", "not-the-password"], ["HKEYS", "nodes"])
    assert wrong[0].startswith(b"-WRONGPASS") and wrong[1].startswith(b"-NOAUTH"), wrong
    password = Path(env["LIVEKIT_REDIS_PASSWORD_FILE"]).read_text()
    ok = redis(addr, ["AUTH", password], ["HLEN", "nodes"])
    assert ok[0] == b"+OK"
    assert ok[1] == f":{env['STACK_LIVEKIT_NODES']}".encode(), "every node registered"
    # No persistence: nothing to leak to disk, nothing stale after a restart.
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"AUTH {password}\r\nCONFIG GET save\r\nCONFIG GET appendonly\r\n".encode())
        f = s.makefile("rb")
        lines = [f.readline().rstrip(b"\r\n") for _ in range(11)]
    assert lines == [b"+OK", b"*2", b"$4", b"save", b"$0", b"", b"*2", b"$10", b"appendonly",
                     b"$2", b"no"], lines


def test_redis_password_is_private(env):
    path = Path(env["LIVEKIT_REDIS_PASSWORD_FILE"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_bytes()
    assert len(password) >= 32
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert password not in argv, f"the Redis password is on the command line of pid {pid}"
    state = Path(env["STACK_DIR"])
    holders = [state / "redis" / "redis.conf", state / "livekit" / "livekit.yaml",
               state / "livekit" / "livekit-2.yaml"]
    for p in holders:
        assert password.decode() in p.read_text(), p
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p} holds the Redis password"


# These need no running stack: `env` on a fresh temporary state dir checks the settings.

def _env_with(tmp_path, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
    env.update(STACK_DIR=str(tmp_path / "state"), **settings)
    return subprocess.run([sys.executable, str(STACK), "env"], capture_output=True, text=True,
                          timeout=60, cwd=str(REPO), env=env)


def test_node_count_out_of_range_is_refused(tmp_path):
    for bad in ("0", "9", "two"):
        r = _env_with(tmp_path, STACK_LIVEKIT_NODES=bad)
        assert r.returncode == 1, (bad, r.stdout)
        assert "STACK_LIVEKIT_NODES" in r.stderr, r.stderr


def test_a_node_port_that_collides_is_refused_before_anything_starts(tmp_path):
    # Node 2 would listen on STACK_LIVEKIT_PORT + 10, which is where Redis was asked to be.
    r = _env_with(tmp_path, STACK_LIVEKIT_NODES="2", STACK_LIVEKIT_PORT="37880",
                  STACK_LIVEKIT_UDP_PORT="37882", STACK_REDIS_PORT="37890")
    assert r.returncode == 1, r.stdout
    assert "STACK_REDIS_PORT" in r.stderr and "37890" in r.stderr, r.stderr
    # The same settings with one node: no Redis, no node 2, nothing collides.
    r = _env_with(tmp_path, STACK_LIVEKIT_NODES="1", STACK_LIVEKIT_PORT="37880",
                  STACK_LIVEKIT_UDP_PORT="37882", STACK_REDIS_PORT="37890")
    assert r.returncode == 0, r.stderr
    assert "LIVEKIT_NODE_URLS" not in r.stdout and "REDIS" not in r.stdout
