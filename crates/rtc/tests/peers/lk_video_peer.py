"""A LiveKit participant made with the official Python SDK (PyPI `livekit`, its own libwebrtc
and VP8 codec) for oracle-calls-rtc's video interop test.

stdin (JSON): {"url", "token", "key_hex", "kdf": "hkdf"|"pbkdf2", "seconds",
               "width", "height"}  (key material as lk_peer.py)
It publishes a camera track (VP8, no simulcast) of width x height frames whose colour changes
every frame, for `seconds`, and decodes every remote video track it is sent.
stdout (JSON): {"sent": n, "heard": frames decoded from others, "sizes": [[w, h], ...] (distinct),
                "tracks": [{"identity", "kind", "encryption"}]}
"""
import asyncio
import json
import sys

from livekit import rtc

from lk_keys import e2ee_options


async def main():
    cfg = json.load(sys.stdin)
    opts = rtc.RoomOptions(auto_subscribe=True)
    opts.encryption = e2ee_options(cfg["key_hex"], cfg["kdf"])
    room = rtc.Room()
    heard = {"n": 0, "sizes": set()}
    tracks = []

    async def watch(track):
        async for ev in rtc.VideoStream(track):
            heard["n"] += 1
            heard["sizes"].add((ev.frame.width, ev.frame.height))

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        tracks.append({"identity": participant.identity, "kind": int(track.kind),
                       "encryption": int(publication.encryption_type)})
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            asyncio.ensure_future(watch(track))

    await room.connect(cfg["url"], cfg["token"], options=opts)
    w, h = cfg["width"], cfg["height"]
    source = rtc.VideoSource(w, h)
    track = rtc.LocalVideoTrack.create_video_track("camera", source)
    await room.local_participant.publish_track(
        track,
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA,
                                video_codec=rtc.VideoCodec.VP8, simulcast=False))
    sent = 0
    fps = 15
    for i in range(int(cfg["seconds"] * fps)):
        c = (i * 7) % 256
        frame = rtc.VideoFrame(w, h, rtc.VideoBufferType.RGBA, bytes([c, 255 - c, 128, 255]) * (w * h))
        source.capture_frame(frame)
        sent += 1
        await asyncio.sleep(1 / fps)
    await room.disconnect()
    print(json.dumps({"sent": sent, "heard": heard["n"], "sizes": sorted(heard["sizes"]),
                      "tracks": tracks}))


asyncio.run(main())
