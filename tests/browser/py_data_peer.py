"""A LiveKit participant made with the official Python SDK (PyPI `livekit`) that exchanges
reliable data messages: the Python side of the browser peer's data-channel interop test.
It complements crates/rtc/tests/peers/lk_peer.py (audio) and takes the same stdin shape.

stdin (JSON): {"url", "token", "key_hex" (or null for no E2EE), "kdf": "hkdf"|"pbkdf2",
               "seconds", "send_data": [str, ...], "expect_data": n,
               "wait_for_identities": [str, ...] (optional),
               "stay_until_left": [str, ...] (optional)}
  key material as lk_peer.py: hkdf -> the 32 raw key bytes; pbkdf2 -> the key as 64 hex
  ASCII characters. E2EE goes through RoomOptions.encryption, which (unlike the deprecated
  `e2ee` option) also encrypts data packets.
  send_data is sent (reliable) once a remote participant -- or every participant named in
  wait_for_identities -- is active; after `seconds`, the peer waits (bounded) until it has
  received expect_data messages, and until every participant named in stay_until_left has
  joined and left again (so a silent observer outlasts the exchange it observes).
stdout (JSON): {"data": [{"from", "topic", "text"}], "sent": n, "e2ee_states": [...]}
"""
import asyncio
import json
import pathlib
import sys

from livekit import rtc

# The key handling every Python peer shares (crates/rtc/tests/peers/lk_keys.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "crates/rtc/tests/peers"))
from lk_keys import e2ee_options  # noqa: E402

ACTIVE = 2  # livekit.rtc ParticipantState PARTICIPANT_STATE_ACTIVE


def log(msg):
    print(f"py-data-peer: {msg}", file=sys.stderr, flush=True)


async def main():
    cfg = json.load(sys.stdin)
    seconds = float(cfg.get("seconds", 3))
    budget = seconds + 20  # everything below ends by then
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget

    def left():
        return max(0.0, deadline - loop.time())

    opts = rtc.RoomOptions(auto_subscribe=True)
    if cfg.get("key_hex"):
        opts.encryption = e2ee_options(cfg["key_hex"], cfg["kdf"])
    room = rtc.Room()
    received = []
    states = []
    changed = asyncio.Event()  # set whenever data arrives or a participant becomes active

    @room.on("data_received")
    def on_data(packet):
        received.append({
            "from": packet.participant.identity if packet.participant else None,
            "topic": packet.topic or None,
            "text": packet.data.decode("utf-8", errors="replace"),
        })
        changed.set()

    @room.on("participant_active")
    def on_active(_participant):
        changed.set()

    @room.on("participant_connected")
    def on_connected(_participant):
        changed.set()

    left_room = set()

    @room.on("participant_disconnected")
    def on_disconnected(participant):
        left_room.add(participant.identity)
        changed.set()

    @room.on("e2ee_state_changed")
    def on_state(participant, state):
        states.append({"identity": participant.identity, "state": int(state)})

    async def until(pred, what):
        while not pred():
            changed.clear()
            if pred():
                return
            try:
                await asyncio.wait_for(changed.wait(), timeout=left())
            except asyncio.TimeoutError:
                raise TimeoutError(f"timed out waiting for {what}") from None

    await asyncio.wait_for(room.connect(cfg["url"], cfg["token"], options=opts), timeout=15)
    log(f"connected as {room.local_participant.identity}")

    sent = 0
    wanted = list(cfg.get("wait_for_identities") or [])

    def ready():
        remotes = room.remote_participants
        if wanted:
            return all(n in remotes and remotes[n].state == ACTIVE for n in wanted)
        return any(p.state == ACTIVE for p in remotes.values())

    async def send():
        nonlocal sent
        await until(ready, f"active participants {wanted or '(any)'}")
        for text in cfg.get("send_data") or []:
            await room.local_participant.publish_data(text, reliable=True)
            sent += 1
        log(f"sent {sent} data messages")

    sender = asyncio.ensure_future(send()) if cfg.get("send_data") else None

    await asyncio.sleep(seconds)  # the session's length, as in lk_peer.py
    expect = int(cfg.get("expect_data") or 0)
    try:
        await until(lambda: len(received) >= expect, f"{expect} data messages")
    except TimeoutError as e:
        log(str(e))
    stay = set(cfg.get("stay_until_left") or [])
    try:
        await until(lambda: stay <= left_room, f"{sorted(stay)} to leave")
    except TimeoutError as e:
        log(str(e))
    if sender is not None:
        await sender  # raises if the send never happened
    await room.disconnect()
    print(json.dumps({"data": received, "sent": sent, "e2ee_states": states}))


asyncio.run(main())
