"""Baseline: matrix-js-sdk's MatrixCall calling MatrixCall (two headless Chromium browsers, one
per party; tests/matrixcall/party.mjs) over the stack's real Synapse and coturn. It proves the
independent peer works before our Rust client is put on either side of it, and pins what a
correct call looks like from the browser: connected, a remote CallFeed on both sides, each side
hears the other's tone, every call event on the homeserver is `m.room.encrypted`, DTLS-SRTP up.

Needs: the running stack (`scripts/stack up`), `npm ci` in tests/matrixcall, Debian's chromium
at /usr/bin/chromium (the tests skip without it). Run: `python3 -m pytest -q tests/matrixcall`.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matrixcall import CHROMIUM, HERE, Party, Stack  # noqa: E402

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: apt-get install chromium (Debian's package)",
)

ALICE_HZ = 440
BOB_HZ = 880


@pytest.fixture(scope="module")
def stack():
    if not (HERE / "node_modules" / "matrix-js-sdk").is_dir():
        pytest.fail("tests/matrixcall/node_modules is missing: run `npm ci` in tests/matrixcall")
    return Stack.from_scripts()


def _pair(stack, callee_args, caller_args):
    """alice calls bob (fresh users, a fresh encrypted DM); both parties' call_result lines."""
    alice, bob = stack.new_user("mc_alice"), stack.new_user("mc_bob")
    callee = Party.answer(bob, *callee_args)
    caller = None
    try:
        callee.wait_for("ready", timeout=60)
        caller = Party.call(alice, bob.user_id, *caller_args)
        a = caller.result(timeout=120)
        b = callee.result(timeout=30)
    finally:
        for p in (caller, callee):
            if p:
                p.stop()
    assert len(a) == 1 and len(b) == 1, (a, b)
    return alice, bob, a[0], b[0]


def _call(stack, *options, hangup_after=4):
    """A call with a tone each way that alice hangs up `hangup_after` s after connecting."""
    return _pair(stack,
                 ["--tone-hz", str(BOB_HZ), "--expect-hz", str(ALICE_HZ), *options],
                 ["--hangup-after", str(hangup_after), "--tone-hz", str(ALICE_HZ),
                  "--expect-hz", str(BOB_HZ), *options])


def _assert_media(res, expect_hz):
    who = res["role"]
    assert res["connected_ms"] is not None, f"{who} never connected: {res['states']}"
    assert res["errors"] == [], f"{who}: {res['errors']}"
    # MatrixCall made a remote CallFeed, and it is not an echo of our own stream.
    assert res["remote_feed"], f"{who} has no remote CallFeed"
    assert res["remote_stream_id"] != res["local_stream_id"], res
    st = res["stats"]
    assert st["transport"]["dtls_state"] == "connected", st
    # Chromium to Chromium negotiates AES-CM-128/HMAC-SHA1-80 (research, §0.3); any SRTP
    # profile proves SRTP is on; the GCM profile is asserted against our own peer.
    assert st["transport"]["srtp_cipher"], st
    assert st["transport"]["srtp_cipher"].startswith("SRTP_"), st
    assert st["codec"]["mime_type"].lower() == "audio/opus", st
    assert st["inbound_audio"]["packets"] > 100, st
    tone = res["tone"]
    assert tone is not None, f"{who} heard nothing"
    assert tone["dominant_hz"] == expect_hz, tone
    assert tone["power"] > 0.5, tone
    assert tone["rms"] > 0.01, tone
    assert res["first_audio_ms"] is not None
    return st


def _assert_signalling(stack, alice, bob, a, b):
    # Both sides saw the whole exchange, and what came from the other side was decrypted.
    for res, peer in ((a, bob), (b, alice)):
        types = {e["type"] for e in res["call_events"]}
        assert {"m.call.invite", "m.call.answer", "m.call.select_answer",
                "m.call.hangup", "m.call.candidates"} <= types, res["call_events"]
        from_peer = [e for e in res["call_events"] if e["sender"] == peer.user_id]
        assert from_peer and all(e["encrypted"] for e in from_peer), from_peer
    assert a["hangup_reason"] == "user_hangup" and a["hangup_party"] == "local", a
    assert b["hangup_reason"] == "user_hangup" and b["hangup_party"] == "remote", b

    # On the homeserver, after the room's set-up, every event is m.room.encrypted: none of the
    # call's events (nor any field of them) is in the clear.
    events = stack.room_events(alice, a["room_id"])
    after_setup = [e for e in events if "state_key" not in e]
    assert len(after_setup) >= 5, [e["type"] for e in events]
    assert {e["type"] for e in after_setup} == {"m.room.encrypted"}, [e["type"] for e in events]
    for e in after_setup:
        assert set(e["content"]) >= {"algorithm", "ciphertext", "session_id"}, e["content"]
        assert "call_id" not in e["content"]
    assert not [e for e in events if e["type"].startswith("m.call.")]


def test_matrixcall_to_matrixcall(stack):
    alice, bob, a, b = _call(stack)
    assert a["role"] == "caller" and b["role"] == "callee"
    assert a["call_id"] == b["call_id"]
    _assert_media(a, BOB_HZ)
    _assert_media(b, ALICE_HZ)
    _assert_signalling(stack, alice, bob, a, b)
    # One DTLS client and one DTLS server.
    roles = {a["stats"]["transport"]["dtls_role"], b["stats"]["transport"]["dtls_role"]}
    assert roles == {"client", "server"}, roles


def test_matrixcall_relay_only(stack):
    alice, bob, a, b = _call(stack, "--force-turn")
    for res, hz in ((a, BOB_HZ), (b, ALICE_HZ)):
        st = _assert_media(res, hz)
        pair = st["pair"]
        assert pair["local"]["type"] == "relay" and pair["remote"]["type"] == "relay", pair
        # The relay is the stack's coturn on loopback, reached over UDP.
        assert pair["local"]["address"] == "127.0.0.1", pair
        assert pair["local"]["relay_protocol"] == "udp", pair
        lo, hi = (int(x) for x in stack.env["TURN_RELAY_PORTS"].split("-"))
        assert lo <= pair["local"]["port"] <= hi and lo <= pair["remote"]["port"] <= hi, pair
    # Each side's relayed address is the other side's remote candidate.
    pa, pb = a["stats"]["pair"], b["stats"]["pair"]
    assert (pa["local"]["port"], pa["remote"]["port"]) == (pb["remote"]["port"], pb["local"]["port"])
    _assert_signalling(stack, alice, bob, a, b)


def test_matrixcall_reject(stack):
    """bob rejects: alice's call ends (hung up by the remote party) without ever connecting,
    and the m.call.reject is encrypted on the server like the rest."""
    alice, bob, a, b = _pair(stack, ["--reject"], [])
    assert a["connected_ms"] is None and b["connected_ms"] is None, (a["states"], b["states"])
    assert a["states"][-1]["state"] == "ended"
    assert a["hangup_party"] == "remote" and b["hangup_party"] == "local", (a, b)
    assert a["remote_feed"] is False and a["tone"] is None
    got = [e for e in a["call_events"] if e["type"] == "m.call.reject"]
    assert got and all(e["encrypted"] and e["sender"] == bob.user_id for e in got), a["call_events"]
    events = stack.room_events(alice, a["room_id"])
    assert {e["type"] for e in events if "state_key" not in e} == {"m.room.encrypted"}



def test_party_refuses_bad_input_and_never_prints_the_token():
    base = {**os.environ, "MATRIXCALL_HOMESERVER": "http://127.0.0.1:9",
            "MATRIXCALL_USER_ID": "@a:localhost", "MATRIXCALL_DEVICE_ID": "DEV"}
    for env, args in (
        (base, ["call", "@b:localhost"]),                                   # no token
        ({**base, "MATRIXCALL_ACCESS_TOKEN": "secret-token-1"}, ["ring"]),  # unknown mode
        ({**base, "MATRIXCALL_ACCESS_TOKEN": "secret-token-1"}, ["call", "bob"]),
        ({**base, "MATRIXCALL_ACCESS_TOKEN": "secret-token-1"}, ["answer", "--calls", "x"]),
    ):
        r = subprocess.run(["node", str(HERE / "party.mjs"), *args], env=env, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert "bad input" in r.stderr
        assert "secret-token-1" not in r.stdout + r.stderr
