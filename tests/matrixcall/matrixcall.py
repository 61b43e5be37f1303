"""Python side of the MatrixCall party (tests/matrixcall/party.mjs) for pytest and scripts.

    from matrixcall import Stack, Party
    stack = Stack.from_scripts()                 # the running `scripts/stack`
    alice, bob = stack.new_user("alice"), stack.new_user("bob")
    callee = Party.answer(bob)
    callee.wait_for("ready")
    caller = Party.call(alice, bob.user_id, "--hangup-after", "4")
    a, b = caller.result(), callee.result()      # the `call_result` lines, one per call
    stack.room_events(alice, a[0]["room_id"])    # the room's events as Synapse stores them

Users are registered with Synapse's shared-secret admin API (the registration secret in the
stack dir); each registration is a fresh device, so each party's in-memory Rust crypto gets a
device of its own. The access token goes to the party in its environment, never on argv.
Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PARTY = HERE / "party.mjs"
CHROMIUM = os.environ.get("MATRIXCALL_CHROMIUM", "/usr/bin/chromium")


class PartyError(AssertionError):
    """A party failed, timed out or reported something other than what was awaited."""


def _http(method, url, body=None, token=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@dataclass(repr=False)
class User:
    """A Matrix account logged in on one device. `repr` leaves the token out."""

    homeserver: str
    user_id: str
    device_id: str
    access_token: str

    def __repr__(self):
        return f"User({self.user_id}, device {self.device_id})"

    def env(self):
        """The environment a party of this user needs (on top of os.environ)."""
        return {
            "MATRIXCALL_HOMESERVER": self.homeserver,
            "MATRIXCALL_USER_ID": self.user_id,
            "MATRIXCALL_DEVICE_ID": self.device_id,
            "MATRIXCALL_ACCESS_TOKEN": self.access_token,
        }


@dataclass
class Stack:
    """The homeserver of a running `scripts/stack` (its `env` output)."""

    env: dict = field(default_factory=dict)

    @classmethod
    def from_scripts(cls):
        out = subprocess.run([str(REPO / "scripts" / "stack"), "env"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        env = {}
        for line in out.splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v.strip("'")
        return cls(env)

    @property
    def homeserver(self):
        return self.env["MATRIX_URL"]

    def new_user(self, prefix="mc"):
        """Registers a fresh user (shared-secret admin API); returns it logged in."""
        name = f"{prefix}_{secrets.token_hex(5)}"
        password = secrets.token_urlsafe(24)
        base = f"{self.homeserver}/_synapse/admin/v1/register"
        status, body = _http("GET", base)
        if status != 200:
            raise RuntimeError(f"GET {base}: {status} {body}")
        nonce = body["nonce"]
        secret = Path(self.env["MATRIX_REGISTRATION_SECRET_FILE"]).read_bytes()
        mac = hmac.new(secret, b"\0".join([nonce.encode(), name.encode(), password.encode(),
                                           b"notadmin"]), hashlib.sha1).hexdigest()
        status, body = _http("POST", base, {"nonce": nonce, "username": name,
                                            "password": password, "admin": False, "mac": mac})
        if status != 200:
            raise RuntimeError(f"registering {name}: {status} {body}")
        return User(self.homeserver, body["user_id"], body["device_id"], body["access_token"])

    def room_events(self, user, room_id, limit=200):
        """The room's timeline as Synapse stores it (`/messages`, newest last): encrypted
        events stay `m.room.encrypted`, the server cannot open them."""
        q = urllib.parse.urlencode({"dir": "b", "limit": limit})
        rid = urllib.parse.quote(room_id, safe="")
        status, body = _http("GET", f"{self.homeserver}/_matrix/client/v3/rooms/{rid}/messages?{q}",
                             token=user.access_token)
        if status != 200:
            raise RuntimeError(f"/messages of {room_id}: {status} {body}")
        return list(reversed(body["chunk"]))


class Party:
    """A running party.mjs: its stdout JSON lines in a queue, stderr echoed (prefixed) and
    kept. Use `Party.call(...)` / `Party.answer(...)`."""

    def __init__(self, name, user, args, log=sys.stderr):
        self.name = name
        self.user = user
        self.lines = []
        self.stderr_lines = []
        self._q = queue.Queue()
        self._log = log
        env = {**os.environ, **user.env()}
        self.proc = subprocess.Popen(["node", str(PARTY), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, encoding="utf-8", env=env)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    @classmethod
    def call(cls, user, invitee, *options, name="caller"):
        return cls(name, user, ["call", invitee, *options])

    @classmethod
    def answer(cls, user, *options, name="callee"):
        return cls(name, user, ["answer", *options])

    def _read_stdout(self):
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = {"event": "unparsed", "line": line.rstrip("\n")}
            self.lines.append(obj)
            self._q.put(obj)
        self._q.put(None)

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if self._log:
                self._log.write(f"[{self.name}] {line}")

    @property
    def stderr(self):
        return "\n".join(self.stderr_lines[-80:])

    def wait_for(self, event, timeout=60, **match):
        """The next line with this `event` (and these field values); fails on exit/timeout."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise PartyError(f"{self.name}: no {event!r} within {timeout} s\n{self.stderr}")
            try:
                obj = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if obj is None:
                self._q.put(None)
                raise PartyError(f"{self.name} ended before {event!r}\n{self.stderr}")
            if obj.get("event") == event and all(obj.get(k) == v for k, v in match.items()):
                return obj

    def events(self, event):
        return [x for x in self.lines if x.get("event") == event]

    def result(self, timeout=120):
        """Waits for the exit; returns the `call_result` lines. Fails unless `done` is ok."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise PartyError(f"{self.name}: still running after {timeout} s\n{self.stderr}")
        for t in self._threads:
            t.join(10)
        done = self.events("done")
        if rc != 0 or not done or not done[-1].get("ok"):
            raise PartyError(f"{self.name} exited {rc}, done={done[-1] if done else None}\n{self.stderr}")
        return self.events("call_result")

    def stop(self):
        """SIGTERM (the party closes its browser), then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
