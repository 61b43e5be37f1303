"""A LiveKit participant made with the official Python SDK (PyPI `livekit`, its own libwebrtc):
the independent peer for oracle-calls-rtc's interop tests.

stdin (JSON): {"url", "token", "key_hex" (or null for no E2EE), "kdf": "hkdf"|"pbkdf2",
               "tone_hz", "listen_hz", "seconds", "publish": bool,
               "ratchet_at": seconds into the tone to ratchet the shared key (optional)}
  key material: hkdf -> the 32 raw key bytes; pbkdf2 -> the key as 64 hex ASCII characters
  (what oracle-calls does; DESIGN §4).
stdout (JSON): {"frames": n, "power": Goertzel power of listen_hz in what it heard (first
                second skipped), "tracks": [...], "e2ee_states": [...],
                "power_after_ratchet": the same for what it heard from 0.5 s after the ratchet,
                "power_last2": the same for the last 2 s it heard}
"""
import asyncio
import json
import math
import sys

from livekit import rtc

from lk_keys import e2ee_options

RATE = 48000


def goertzel(samples, freq):
    if not samples:
        return 0.0
    w = 2 * math.pi * freq / RATE
    coeff = 2 * math.cos(w)
    s1 = s2 = 0.0
    energy = 0.0
    for x in samples:
        energy += x * x
        s0 = x + coeff * s1 - s2
        s2, s1 = s1, s0
    if energy == 0:
        return 0.0
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    return max(0.0, min(1.0, 2 * power / (len(samples) * energy)))


async def main():
    cfg = json.load(sys.stdin)
    opts = rtc.RoomOptions(auto_subscribe=True)
    if cfg.get("key_hex"):
        opts.encryption = e2ee_options(cfg["key_hex"], cfg["kdf"])
    room = rtc.Room()
    ratchet_mark = None
    heard = []
    tracks = []
    states = []
    done = asyncio.Event()

    async def listen(track):
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        async for ev in stream:
            heard.extend(ev.frame.data)
            if done.is_set():
                break

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        tracks.append({"identity": participant.identity, "kind": int(track.kind),
                       "encryption": int(publication.encryption_type)})
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            asyncio.ensure_future(listen(track))

    @room.on("e2ee_state_changed")
    def on_state(participant, state):
        states.append({"identity": participant.identity, "state": int(state)})

    await room.connect(cfg["url"], cfg["token"], options=opts)
    if cfg.get("publish", True):
        source = rtc.AudioSource(RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("tone", source)
        await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        n = 0
        total = int(cfg["seconds"] * 50)
        ratchet_frame = int(cfg["ratchet_at"] * 50) if cfg.get("ratchet_at") else None
        for f in range(total):
            if f == ratchet_frame:
                room.e2ee_manager.key_provider.ratchet_shared_key(0)
                ratchet_mark = len(heard)
            frame = rtc.AudioFrame.create(RATE, 1, 960)
            data = frame.data
            for i in range(960):
                data[i] = int(8000 * math.sin(2 * math.pi * cfg["tone_hz"] * (n + i) / RATE))
            n += 960
            await source.capture_frame(frame)
    else:
        await asyncio.sleep(cfg["seconds"])
    done.set()
    await room.disconnect()
    tail = heard[RATE:]  # skip the first second (jitter buffer, key setup)
    after = None
    if ratchet_mark is not None:
        after = goertzel(heard[ratchet_mark + RATE // 2:], cfg["listen_hz"])
    print(json.dumps({"frames": len(heard) // 960, "power": goertzel(tail, cfg["listen_hz"]),
                      "tracks": tracks, "e2ee_states": states,
                      "power_after_ratchet": after,
                      "power_last2": goertzel(heard[-2 * RATE:], cfg["listen_hz"])}))


asyncio.run(main())
