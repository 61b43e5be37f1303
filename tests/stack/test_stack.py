"""Checks of the local test stack (scripts/stack) against real servers.

Run after `scripts/stack up` (the suite reads `scripts/stack env` and never starts the main
stack itself):  python3 -m pytest -q tests/stack
Standard library + pytest only; PostgreSQL is reached with the `psql` client.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import json
import os
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack"

# Loopback only: ignore any HTTP proxy in the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, body=None, headers=None, timeout=10):
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _HTTP.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stack(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, str(STACK), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(REPO))


def parse_kv(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        (item,) = shlex.split(line)
        key, _, value = item.partition("=")
        out[key] = value
    return out


@pytest.fixture(scope="session")
def env() -> dict:
    status = stack("status")
    if status.returncode != 0:
        pytest.fail("the stack is not up and healthy; run `scripts/stack up` first\n"
                    + status.stdout + status.stderr)
    r = stack("env")
    assert r.returncode == 0, r.stderr
    return parse_kv(r.stdout)


def read_secret(path: str) -> str:
    return Path(path).read_text()


def free_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ----------------------------------------------------------------------------- env / status


REQUIRED_KEYS = [
    "STACK_DIR", "MATRIX_URL", "MATRIX_SERVER_NAME", "MATRIX_REGISTRATION_SECRET_FILE",
    "LIVEKIT_URL", "LIVEKIT_HTTP_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET_FILE",
    "LIVEKIT_WEBHOOK_URL", "DATABASE_URL", "STACK_MATRIX_PORT", "STACK_LIVEKIT_PORT",
    "STACK_LIVEKIT_UDP_PORT", "STACK_PG_PORT", "STACK_SERVER_PORT",
    "STACK_TURN_PORT", "TURN_URI", "TURN_REALM", "TURN_SHARED_SECRET_FILE", "TURN_LOG",
]


def test_env_has_every_key_and_no_secret_values(env):
    missing = [k for k in REQUIRED_KEYS if not env.get(k)]
    assert not missing, f"scripts/stack env lacks {missing}"
    assert env["LIVEKIT_URL"].startswith("ws://127.0.0.1:")
    assert env["LIVEKIT_HTTP_URL"] == "http://127.0.0.1:" + env["STACK_LIVEKIT_PORT"]
    assert env["MATRIX_URL"] == "http://127.0.0.1:" + env["STACK_MATRIX_PORT"]
    assert env["LIVEKIT_WEBHOOK_URL"].startswith("http")
    db = urllib.parse.urlsplit(env["DATABASE_URL"])
    assert db.scheme == "postgres" and db.hostname == "127.0.0.1"
    assert str(db.port) == env["STACK_PG_PORT"]
    raw = stack("env").stdout
    for key in ("LIVEKIT_API_SECRET_FILE", "MATRIX_REGISTRATION_SECRET_FILE",
                "TURN_SHARED_SECRET_FILE"):
        path = Path(env[key])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} must be mode 0600"
        value = path.read_text()
        assert len(value) >= 32
        assert value not in raw, f"the secret in {path} leaked into `scripts/stack env`"


def test_status_exits_zero_and_names_every_server(env):
    r = stack("status")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("postgres", "turn", "synapse", "livekit"):
        lines = [line for line in r.stdout.splitlines() if line.startswith(name)]
        assert lines, f"status does not mention {name}:\n{r.stdout}"
        assert "healthy" in lines[0] and "UNHEALTHY" not in lines[0], lines[0]


def pids_from_status(text: str) -> dict:
    pids = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[1] == "running":
            pids[parts[0]] = int(parts[3])
    return pids


def test_second_up_is_a_quick_no_op(env):
    before = pids_from_status(stack("status").stdout)
    # With STACK_LIVEKIT_NODES > 1 there are also livekit-2, ... and redis.
    assert {"postgres", "synapse", "livekit"} <= set(before), before
    t0 = time.monotonic()
    r = stack("up")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "already up" in r.stderr
    assert elapsed < 5.0, f"a no-op up took {elapsed:.1f} s"
    after = pids_from_status(stack("status").stdout)
    assert after == before, "up restarted a healthy server"


# ----------------------------------------------------------------------------- Synapse


def test_synapse_health(env):
    status, body = http("GET", env["MATRIX_URL"] + "/health")
    assert status == 200
    assert body.strip() == b"OK"


def test_synapse_serves_no_open_registration(env):
    status, body = http("POST", env["MATRIX_URL"] + "/_matrix/client/v3/register",
                        {"username": "intruder" + secrets.token_hex(4), "password": "x" * 20,
                         "auth": {"type": "m.login.dummy"}})
    assert status == 403, body
    assert json.loads(body)["errcode"] == "M_FORBIDDEN"


def provision(name, *extra):
    r = stack("user", name, *extra)
    assert r.returncode == 0, r.stderr
    return parse_kv(r.stdout)


@pytest.fixture(scope="module")
def user(env):
    name = "stacktest_" + secrets.token_hex(4)
    first = provision(name)
    return {"name": name, **first}


def test_provisioning_is_idempotent(env, user):
    assert user["MATRIX_USER_STATUS"] == "created"
    assert user["MATRIX_USER_ID"] == f"@{user['name']}:{env['MATRIX_SERVER_NAME']}"
    pwfile = Path(user["MATRIX_USER_PASSWORD_FILE"])
    assert stat.S_IMODE(pwfile.stat().st_mode) == 0o600
    password = pwfile.read_text()
    again = provision(user["name"])
    assert again["MATRIX_USER_STATUS"] == "exists"
    assert again["MATRIX_USER_ID"] == user["MATRIX_USER_ID"]
    assert Path(again["MATRIX_USER_PASSWORD_FILE"]).read_text() == password


def login(env, name, password):
    return http("POST", env["MATRIX_URL"] + "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
        "password": password})


def test_login_then_openid_token_verifies(env, user):
    password = Path(user["MATRIX_USER_PASSWORD_FILE"]).read_text()
    status, body = login(env, user["name"], password)
    assert status == 200, body
    session = json.loads(body)
    assert session["user_id"] == user["MATRIX_USER_ID"]
    token = session["access_token"]
    uid = urllib.parse.quote(session["user_id"], safe="")
    status, body = http("POST", f"{env['MATRIX_URL']}/_matrix/client/v3/user/{uid}/openid/request_token",
                        {}, headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    openid = json.loads(body)
    assert openid["token_type"] == "Bearer"
    assert openid["matrix_server_name"] == env["MATRIX_SERVER_NAME"]
    assert openid["expires_in"] > 0
    q = urllib.parse.urlencode({"access_token": openid["access_token"]})
    status, body = http("GET", f"{env['MATRIX_URL']}/_matrix/federation/v1/openid/userinfo?{q}")
    assert status == 200, body
    assert json.loads(body)["sub"] == user["MATRIX_USER_ID"]
    # The client access token is not an OpenID token.
    q = urllib.parse.urlencode({"access_token": token})
    status, _ = http("GET", f"{env['MATRIX_URL']}/_matrix/federation/v1/openid/userinfo?{q}")
    assert status == 401


def test_forged_openid_token_is_rejected(env, user):
    password = Path(user["MATRIX_USER_PASSWORD_FILE"]).read_text()
    status, body = login(env, user["name"], password)
    assert status == 200, body
    token = json.loads(body)["access_token"]
    uid = urllib.parse.quote(user["MATRIX_USER_ID"], safe="")
    status, body = http("POST", f"{env['MATRIX_URL']}/_matrix/client/v3/user/{uid}/openid/request_token",
                        {}, headers={"Authorization": f"Bearer {token}"})
    real = json.loads(body)["access_token"]
    # Same shape as a real token, one character changed; and a random one.
    forged = real[:-1] + ("A" if real[-1] != "A" else "B")
    for candidate in (forged, secrets.token_urlsafe(24)):
        q = urllib.parse.urlencode({"access_token": candidate})
        status, body = http("GET", f"{env['MATRIX_URL']}/_matrix/federation/v1/openid/userinfo?{q}")
        assert status == 401, body
        assert json.loads(body)["errcode"] == "M_UNKNOWN_TOKEN"


def test_wrong_password_does_not_log_in(env, user):
    status, body = login(env, user["name"], "not-the-password")
    assert status == 403, body
    assert json.loads(body)["errcode"] == "M_FORBIDDEN"


def test_provision_with_given_password_file(env, tmp_path):
    name = "stacktest_pw_" + secrets.token_hex(4)
    pwfile = tmp_path / "pw"
    pwfile.write_text("chosen-" + secrets.token_hex(8))
    out = provision(name, "--password-file", str(pwfile))
    assert out["MATRIX_USER_STATUS"] == "created"
    assert Path(out["MATRIX_USER_PASSWORD_FILE"]) == pwfile
    status, body = login(env, name, pwfile.read_text())
    assert status == 200, body
    # A user that exists, with a password file that does not match, is an error.
    pwfile.write_text("something-else")
    r = stack("user", name, "--password-file", str(pwfile))
    assert r.returncode != 0
    assert "does not log in" in r.stderr


# ----------------------------------------------------------------------------- LiveKit


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign_jwt(claims: dict, secret: str) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def livekit_token(env, video: dict, secret: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": env["LIVEKIT_API_KEY"], "sub": "stack-test", "nbf": now - 5,
              "exp": now + 600, "video": video}
    return sign_jwt(claims, secret if secret is not None else read_secret(env["LIVEKIT_API_SECRET_FILE"]))


def twirp(env, method: str, body: dict, token: str):
    return http("POST", f"{env['LIVEKIT_HTTP_URL']}/twirp/livekit.RoomService/{method}", body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def test_jwt_signer_matches_known_vector():
    # The example token in docs/livekit-interop.md §4 (claims and secret "secret").
    claims = {"iss": "devkey", "sub": "alice", "nbf": 1700000000, "exp": 1700021600,
              "video": {"roomJoin": True, "room": "test", "canPublish": True,
                        "canSubscribe": True, "canPublishData": True}}
    assert sign_jwt(claims, "secret").endswith(".z0IMGV_QNquRc-LcQkCUgc851TjkwY8nEiMITjD95_Y")


def test_livekit_answers_ok(env):
    status, body = http("GET", env["LIVEKIT_HTTP_URL"] + "/")
    assert status == 200
    assert body.strip() == b"OK"


def test_livekit_list_rooms_with_signed_token(env):
    status, body = twirp(env, "ListRooms", {}, livekit_token(env, {"roomList": True}))
    assert status == 200, body
    reply = json.loads(body)
    assert isinstance(reply.get("rooms", []), list)


def test_livekit_rejects_wrong_secret(env):
    token = livekit_token(env, {"roomList": True}, secret="wrong-" + secrets.token_hex(20))
    status, body = twirp(env, "ListRooms", {}, token)
    assert status == 401, body


def test_livekit_create_then_delete_room(env):
    token = livekit_token(env, {"roomCreate": True, "roomList": True})
    name = "stacktest-" + secrets.token_hex(4)
    status, body = twirp(env, "CreateRoom", {"name": name, "emptyTimeout": 60}, token)
    assert status == 200, body
    room = json.loads(body)
    assert room["name"] == name
    assert room["sid"].startswith("RM_")
    status, body = twirp(env, "ListRooms", {"names": [name]}, token)
    assert status == 200, body
    assert [r["name"] for r in json.loads(body).get("rooms", [])] == [name]
    status, body = twirp(env, "DeleteRoom", {"room": name}, token)
    assert status == 200, body
    status, body = twirp(env, "ListRooms", {"names": [name]}, token)
    assert status == 200, body
    assert json.loads(body).get("rooms", []) == []


def test_livekit_secret_is_on_no_command_line(env):
    secret = read_secret(env["LIVEKIT_API_SECRET_FILE"]).encode()
    seen = 0
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            argv = Path(path).read_bytes()
        except OSError:
            continue
        seen += 1
        assert secret not in argv, f"the LiveKit API secret is on the command line of {path}"
    assert seen > 3
    livekit_yaml = Path(env["STACK_DIR"]) / "livekit" / "livekit.yaml"
    assert secret.decode() not in livekit_yaml.read_text()


def test_livekit_udp_mux_listens_on_loopback(env):
    port = int(env["STACK_LIVEKIT_UDP_PORT"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError):
            s.bind(("127.0.0.1", port))
    finally:
        s.close()


# ----------------------------------------------------------------------------- coturn


def stun_binding(port: int) -> bytes:
    txid = secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + txid, ("127.0.0.1", port))
        reply, _ = s.recvfrom(2048)
    assert reply[:2] == b"\x01\x01" and reply[8:20] == txid, reply[:20].hex()
    return reply


def test_turn_answers_stun_on_loopback_udp(env):
    port = int(env["STACK_TURN_PORT"])
    assert env["TURN_URI"] == f"turn:127.0.0.1:{port}?transport=udp"
    stun_binding(port)
    conf = Path(env["STACK_DIR"]) / "turn" / "turnserver.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600, "the coturn config holds the shared secret"


def test_synapse_hands_out_coturn_credentials(env, user):
    """/voip/turnServer: the stack's TURN URI and TURN REST credentials made with the secret
    coturn checks (password = base64(HMAC-SHA1(secret, "<expiry>:<user id>")))."""
    password = Path(user["MATRIX_USER_PASSWORD_FILE"]).read_text()
    status, body = login(env, user["name"], password)
    assert status == 200, body
    token = json.loads(body)["access_token"]
    status, body = http("GET", env["MATRIX_URL"] + "/_matrix/client/v3/voip/turnServer",
                        headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    turn = json.loads(body)
    assert turn["uris"] == [env["TURN_URI"]]
    expiry, _, user_id = turn["username"].partition(":")
    assert user_id == user["MATRIX_USER_ID"]
    assert 0 < int(expiry) - time.time() <= 3600 + 5
    assert turn["ttl"] == 3600
    secret = read_secret(env["TURN_SHARED_SECRET_FILE"]).encode()
    mac = hmac.new(secret, turn["username"].encode(), hashlib.sha1).digest()
    assert turn["password"] == base64.b64encode(mac).decode()


# ----------------------------------------------------------------------------- PostgreSQL


def psql_path() -> str:
    found = shutil.which("psql") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))), None)
    assert found, "psql not found (apt-get install postgresql-client)"
    return found


def psql(env, sql: str):
    url = urllib.parse.urlsplit(env["DATABASE_URL"])
    pg_env = dict(os.environ, PGPASSWORD=urllib.parse.unquote(url.password or ""),
                  PGCONNECT_TIMEOUT="5")
    argv = [psql_path(), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", url.hostname,
            "-p", str(url.port), "-U", urllib.parse.unquote(url.username),
            "-d", url.path.lstrip("/")]
    return subprocess.run(argv, input=sql, capture_output=True, text=True, env=pg_env, timeout=30)


def test_postgres_create_use_drop_table(env):
    table = "stacktest_" + secrets.token_hex(4)
    r = psql(env, f"CREATE TABLE {table} (id int PRIMARY KEY, v text);\n"
                  f"INSERT INTO {table} VALUES (1, 'one'), (2, 'two');\n"
                  f"SELECT count(*) FROM {table};\n"
                  f"DROP TABLE {table};\n"
                  f"SELECT to_regclass('{table}') IS NULL;\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "t"]


def test_postgres_rejects_a_wrong_password(env):
    url = urllib.parse.urlsplit(env["DATABASE_URL"])
    bad = url._replace(netloc=f"{url.username}:wrong@{url.hostname}:{url.port}")
    r = psql(dict(env, DATABASE_URL=urllib.parse.urlunsplit(bad)), "SELECT 1;")
    assert r.returncode != 0
    assert "password authentication failed" in r.stderr


# ----------------------------------------------------------------------------- failure modes


def test_busy_port_is_reported(env, tmp_path):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        ports = set()
        while len(ports) < 4:
            p = free_port()
            if p != busy:
                ports.add(p)
        lk, pg, srv, udp = sorted(ports)
        second = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
        second.update(STACK_DIR=str(tmp_path / "second-stack"), STACK_MATRIX_PORT=str(busy),
                      STACK_LIVEKIT_PORT=str(lk), STACK_LIVEKIT_UDP_PORT=str(udp),
                      STACK_PG_PORT=str(pg), STACK_SERVER_PORT=str(srv))
        if "STACK_CACHE_DIR" in os.environ:
            second["STACK_CACHE_DIR"] = os.environ["STACK_CACHE_DIR"]
        t0 = time.monotonic()
        r = stack("up", env=second, timeout=120)
        elapsed = time.monotonic() - t0
        assert r.returncode != 0, r.stdout + r.stderr
        assert f"port {busy}/tcp" in r.stderr, r.stderr
        assert "STACK_MATRIX_PORT" in r.stderr
        assert "in use" in r.stderr
        # `ss` as root names the holder: this very test process.
        if os.geteuid() == 0 and shutil.which("ss"):
            assert f"pid={os.getpid()}" in r.stderr, r.stderr
        assert elapsed < 60, "a busy port must be reported before anything slow happens"
        st = stack("status", env=second)
        assert st.returncode != 0
        assert "running" not in st.stdout, "nothing of the second stack may be left running"
    finally:
        holder.close()
