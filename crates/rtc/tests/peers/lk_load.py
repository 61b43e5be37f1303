"""Python-SDK side of `scripts/bench-rtc`: one participant in each of N rooms (E2EE on),
publishing a 600 Hz tone (12 whole cycles per 20 ms, one precomputed frame) and subscribing.

stdin (JSON): {"url", "tokens": [...], "key_hex", "kdf": "hkdf"|"pbkdf2", "seconds"}
stdout (JSON): {"rooms", "frames_heard"}
"""
import asyncio
import json
import math
import sys

from livekit import rtc

from lk_keys import e2ee_options

RATE = 48000


async def one_room(cfg, token, frame_samples, counter):
    opts = rtc.RoomOptions(auto_subscribe=True,
                           encryption=e2ee_options(cfg["key_hex"], cfg["kdf"]))
    room = rtc.Room()

    async def listen(track):
        async for _ in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
            counter[0] += 1

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            asyncio.ensure_future(listen(track))

    await room.connect(cfg["url"], token, options=opts)
    source = rtc.AudioSource(RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    for _ in range(int(cfg["seconds"] * 50)):
        frame = rtc.AudioFrame.create(RATE, 1, 960)
        frame.data[:] = frame_samples
        await source.capture_frame(frame)
    await room.disconnect()


async def main():
    cfg = json.load(sys.stdin)
    import array
    frame_samples = array.array("h", (int(8000 * math.sin(2 * math.pi * 600 * i / RATE)) for i in range(960)))
    counter = [0]
    await asyncio.gather(*(one_room(cfg, t, frame_samples, counter) for t in cfg["tokens"]))
    print(json.dumps({"rooms": len(cfg["tokens"]), "frames_heard": counter[0]}))


asyncio.run(main())
