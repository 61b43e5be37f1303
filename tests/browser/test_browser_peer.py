"""Proof that the browser peer (tests/browser/peer.mjs: livekit-client in headless Chromium)
interoperates with the official Python SDK (crates/rtc/tests/peers/lk_peer.py and
tests/browser/py_data_peer.py) through the stack's real livekit-server, so it can serve as the
independent JS peer for oracle-calls' own interop tests.

Needs: the running stack (`scripts/stack`), node with `npm ci` done in tests/browser, Debian's
`chromium` at /usr/bin/chromium (the tests skip without it), and PyPI `livekit` for the
Python peers. Run: `python3 -m pytest -q tests/browser`.
"""
import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHROMIUM = "/usr/bin/chromium"
BROWSER_PEER = HERE / "peer.mjs"
PY_DATA_PEER = HERE / "py_data_peer.py"
PY_TONE_PEER = REPO / "crates" / "rtc" / "tests" / "peers" / "lk_peer.py"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: apt-get install chromium (Debian's package)",
)


# --- the stack and its tokens ---------------------------------------------------------------


def _stack_env():
    out = subprocess.run(
        [str(REPO / "scripts" / "stack"), "env"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    secret = Path(env["LIVEKIT_API_SECRET_FILE"]).read_text().strip()
    return env["LIVEKIT_URL"], env["LIVEKIT_API_KEY"], secret


def _b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class LiveKit:
    def __init__(self):
        self.url, self.api_key, self._secret = _stack_env()

    def token(self, room, identity):
        """An HS256 LiveKit join token (protocol auth/accesstoken.go claims)."""
        now = int(time.time())
        claims = {
            "iss": self.api_key, "sub": identity, "nbf": now - 10, "exp": now + 600,
            "video": {"roomJoin": True, "room": room, "canPublish": True,
                      "canSubscribe": True, "canPublishData": True},
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode())
            for part in ({"alg": "HS256", "typ": "JWT"}, claims)
        )
        sig = hmac.new(self._secret.encode(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(sig)}"


@pytest.fixture(scope="module")
def lk():
    if not (HERE / "node_modules" / "livekit-client").is_dir():
        pytest.fail("tests/browser/node_modules is missing: run `npm ci` in tests/browser")
    return LiveKit()


def _room(prefix):
    return f"{prefix}-{secrets.token_hex(6)}"


# --- peer processes -------------------------------------------------------------------------


class Peer:
    """A peer subprocess: config on stdin (secrets never on argv), one JSON line on stdout,
    diagnostics on stderr (echoed to ours and kept for assertions)."""

    def __init__(self, name, argv, cfg, ready_marker):
        self.name = name
        self.ready_marker = ready_marker
        self.ready = threading.Event()
        self.stderr_lines = []
        self._stdout = []
        self.started = time.monotonic()
        self.ready_after = None
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8",
        )
        self._threads = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=lambda: self._stdout.append(self.proc.stdout.read()),
                             daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.proc.stdin.write(json.dumps(cfg))
        self.proc.stdin.close()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            sys.stderr.write(f"[{self.name}] {line}")
            if self.ready_marker and self.ready_marker in line and not self.ready.is_set():
                self.ready_after = time.monotonic() - self.started
                self.ready.set()
        self.ready.set()  # the stream ended: wake any waiter (result() reports the failure)

    @property
    def stderr(self):
        return "\n".join(self.stderr_lines)

    def wait_ready(self, timeout=30):
        if not self.ready.wait(timeout) or self.ready_after is None:
            self.stop()
            pytest.fail(f"{self.name} did not join within {timeout} s:\n{self.stderr}")

    def result(self, timeout=90):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.name} gave no result within {timeout} s:\n{self.stderr}")
        for t in self._threads:
            t.join(10)
        out = "".join(self._stdout)
        assert rc == 0, f"{self.name} exited {rc}:\n{self.stderr}"
        try:
            return json.loads(out)
        except json.JSONDecodeError as e:
            pytest.fail(f"{self.name} printed no JSON result ({e}): {out!r}\n{self.stderr}")

    def stop(self):
        """Ends this peer (SIGTERM lets the browser peer close Chromium first)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def peers():
    started = []

    def start(name, argv, cfg, ready_marker):
        peer = Peer(name, argv, cfg, ready_marker)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def browser_peer(start, lk, room, identity, **cfg):
    cfg = {"url": lk.url, "token": lk.token(room, identity), **cfg}
    return start(identity, ["node", str(BROWSER_PEER)], cfg, "browser-peer: connected")


def python_peer(start, lk, room, identity, script, **cfg):
    cfg = {"url": lk.url, "token": lk.token(room, identity), **cfg}
    return start(identity, [sys.executable, str(script)], cfg, None)


def data_peer(start, lk, room, identity, **cfg):
    cfg = {"url": lk.url, "token": lk.token(room, identity), **cfg}
    return start(identity, [sys.executable, str(PY_DATA_PEER)], cfg, "py-data-peer: connected")


# --- 1. two-way tone under E2EE, both key modes ----------------------------------------------


@pytest.mark.parametrize("kdf", ["hkdf", "pbkdf2"])
def test_two_way_tone_with_python_sdk(lk, peers, kdf):
    room = _room(f"browser-tone-{kdf}")
    key = secrets.token_hex(32)
    browser = browser_peer(peers, lk, room, "browser", key_hex=key, kdf=kdf,
                           tone_hz=440, listen_hz=880, seconds=6, publish=True)
    browser.wait_ready()
    print(f"browser peer joined {browser.ready_after:.2f} s after spawn", file=sys.stderr)
    py = python_peer(peers, lk, room, "py-peer", PY_TONE_PEER, key_hex=key, kdf=kdf,
                     tone_hz=880, listen_hz=440, seconds=6, publish=True)
    py_out, b_out = py.result(), browser.result()
    print(f"{kdf}: browser {json.dumps(b_out)}\n{kdf}: python {json.dumps(py_out)}",
          file=sys.stderr)

    assert b_out["e2ee"] is True
    assert b_out["sample_rate"] == 48000
    assert b_out["frames"] > 150, f"browser heard too little: {b_out['frames']} frames"
    assert b_out["power"] > 0.5, f"browser did not hear 880 Hz: {b_out}"
    assert py_out["power"] > 0.5, f"python did not hear 440 Hz: {py_out}"
    assert b_out["e2ee_errors"] == [], b_out["e2ee_errors"]
    assert any(t["identity"] == "py-peer" and t["kind"] == "audio" and t["encrypted"]
               and t["encryption"] == 1 for t in b_out["tracks"]), b_out["tracks"]
    assert any(t["identity"] == "browser" and t["encryption"] == 1
               for t in py_out["tracks"]), py_out["tracks"]
    assert {"identity": "py-peer", "enabled": True} in b_out["e2ee_states"], b_out


# --- 2. data messages each way under E2EE ----------------------------------------------------


@pytest.mark.parametrize("kdf", ["hkdf", "pbkdf2"])
def test_encrypted_data_messages_with_python_sdk(lk, peers, kdf):
    room = _room(f"browser-data-{kdf}")
    key = secrets.token_hex(32)
    from_browser = ["browser→python #1", "browser→python #2: ünïcødé ✓ " + "x" * 2000]
    from_python = ["python→browser #1", "python→browser #2: ünïcødé ✓ " + "y" * 2000]
    # A keyless participant in the same room: every message must reach it only as
    # undecryptable ciphertext. It joins first, and both senders wait until it is active.
    eve = data_peer(peers, lk, room, "eve", key_hex=None, seconds=1,
                    stay_until_left=["browser", "py-data"])
    eve.wait_ready()
    browser = browser_peer(peers, lk, room, "browser", key_hex=key, kdf=kdf, publish=False,
                           seconds=3, send_data=from_browser, expect_data=len(from_python),
                           wait_for_identities=["py-data", "eve"])
    browser.wait_ready()
    py = data_peer(peers, lk, room, "py-data", key_hex=key, kdf=kdf, seconds=3,
                   send_data=from_python, expect_data=len(from_browser),
                   wait_for_identities=["browser", "eve"])
    b_out, py_out, eve_out = browser.result(), py.result(), eve.result()
    print(f"browser {json.dumps(b_out)[:600]}\npython {json.dumps(py_out)[:600]}\n"
          f"eve {json.dumps(eve_out)}", file=sys.stderr)

    assert b_out["sent_data"] == len(from_browser) and py_out["sent"] == len(from_python)
    assert [(d["from"], d["text"]) for d in b_out["data"]] == [("py-data", t) for t in from_python]
    assert [(d["from"], d["text"]) for d in py_out["data"]] == [("browser", t) for t in from_browser]
    # livekit-client reports the EncryptedPacket's type: GCM (1) means the Python SDK sent
    # DataPacket.encrypted_packet; a plaintext user packet would be reported as NONE (0).
    assert all(d["encryption"] == 1 for d in b_out["data"]), b_out["data"]
    # The keyless participant got the packets but none of the text: the Python SDK (livekit
    # 1.2.1, its Rust core) logs this line for each data packet it cannot decrypt.
    assert eve_out["data"] == [], eve_out
    for sender in ("browser", "py-data"):
        assert f"Failed to decrypt data packet from {sender}" in eve.stderr, eve.stderr


def test_data_messages_under_the_wrong_key_are_dropped(lk, peers):
    room = _room("browser-data-wrong")
    browser = browser_peer(peers, lk, room, "browser", key_hex=secrets.token_hex(32),
                           kdf="hkdf", publish=False, seconds=5, send_data=["secret-b"])
    browser.wait_ready()
    py = data_peer(peers, lk, room, "py-data", key_hex=secrets.token_hex(32), kdf="hkdf",
                   seconds=3, send_data=["secret-p"])
    py_out, b_out = py.result(), browser.result()
    assert b_out["sent_data"] == 1 and py_out["sent"] == 1
    assert b_out["data"] == [] and py_out["data"] == [], (b_out, py_out)
    # livekit 1.2.1's log line for a data packet it cannot decrypt (see the test above).
    assert "Failed to decrypt data packet from browser" in py.stderr, py.stderr


# --- 3. the wrong key: nothing heard, errors reported ----------------------------------------


def test_wrong_key_hears_nothing_and_reports_errors(lk, peers):
    room = _room("browser-wrong-key")
    browser = browser_peer(peers, lk, room, "browser", key_hex=secrets.token_hex(32),
                           kdf="hkdf", tone_hz=440, listen_hz=880, seconds=6, publish=True)
    browser.wait_ready()
    py = python_peer(peers, lk, room, "py-peer", PY_TONE_PEER, key_hex=secrets.token_hex(32),
                     kdf="hkdf", tone_hz=880, listen_hz=440, seconds=6, publish=True)
    py_out, b_out = py.result(), browser.result()
    print(f"browser {json.dumps(b_out)}\npython {json.dumps(py_out)}", file=sys.stderr)

    assert any(t["identity"] == "py-peer" and t["encrypted"] for t in b_out["tracks"]), b_out
    assert b_out["power"] < 0.05, f"the browser heard 880 Hz under the wrong key: {b_out}"
    assert py_out["power"] < 0.05, f"python heard 440 Hz under the wrong key: {py_out}"
    errors = b_out["e2ee_errors"]
    assert errors, "the browser reported no E2EE error"
    assert all(e["identity"] == "py-peer" for e in errors), errors
    assert any(e["reason"] == "InvalidKey" for e in errors), errors
