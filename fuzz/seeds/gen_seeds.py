#!/usr/bin/env python3
"""Writes the committed seed inputs of the fuzz targets that need structure to get deep:

- kt_verify: the genuine answers of the real akd directory in
  crates/kt/tests/vectors/kt_lookup.json (lookup and key-history proofs as raw protobuf, one
  JSON answer of each kind, a signed checkpoint) and the record encodings of
  crates/kt/tests/vectors/kt.json, in the input layout fuzz_targets/kt_verify.rs documents.
- wav_reader: small WAV streams (mono; stereo with a LIST chunk and an unknown data size).
- prekey_open: the genuine envelope and signed prekey, unchanged (modes 2 and 3).
- direct_signal: MatrixCall's event shapes (invite, candidates, answer, select_answer,
  negotiate, reject, hangup) and ours (the binding extension, the key confirmation).
- direct_sdp: an Opus offer shaped like a browser's, and a minimal answer.
- turn_response: STUN answers a TURN server gives to Allocate (401 with realm and nonce, and
  a success with relayed and mapped addresses).

Run from anywhere: python3 fuzz/seeds/gen_seeds.py (rewrites fuzz/seeds/<target>/).
"""
import base64
import hashlib
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = ROOT / "fuzz" / "seeds"


def b64u(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write(target, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    # Named by content, as libFuzzer names corpus files.
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def kt():
    v = json.loads((ROOT / "crates/kt/tests/vectors/kt_lookup.json").read_text())
    dids = sorted({c["did"] for c in v["cases"] + v["histories"]})
    cps = sorted(
        v["checkpoints"],
        key=lambda c: (c["checkpoint"]["epoch"], bytes.fromhex(c["checkpoint"]["rootHash"]), b64url(c["signature"])),
    )
    cp_index = {c["signature"]: i for i, c in enumerate(cps)}
    seen = set()
    for mode, cases in ((0, v["cases"]), (1, v["histories"])):
        json_written = False
        for c in cases:
            if not c["expect"]["ok"]:
                continue
            body = json.loads(c["body"])
            sig = body["checkpoint"]["signature"]
            d = dids.index(c["did"])
            if not json_written:
                write("kt_verify", bytes([mode + 2 + 6 * d]) + c["body"].encode())
                write("kt_verify", bytes([5]) + json.dumps(body["checkpoint"]).encode())
                json_written = True
            if sig not in cp_index or (mode, d, sig) in seen:
                continue
            seen.add((mode, d, sig))
            write("kt_verify", bytes([mode + 6 * d, cp_index[sig]]) + b64url(body["proof"]))
    r = json.loads((ROOT / "crates/kt/tests/vectors/kt.json").read_text())
    for rec in r["records"]:
        write("kt_verify", bytes([4]) + bytes.fromhex(rec["bytesHex"]))
        write("kt_verify", bytes([5]) + json.dumps(rec["record"]).encode())


def wav(rate, channels, samples, data_size=None, extra=b""):
    data = b"".join(struct.pack("<h", s) for s in samples)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    size = len(data) if data_size is None else data_size
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + extra + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def speech():
    # First byte: the piece size the target pushes the stream in (0 = whole).
    write("wav_reader", bytes([0]) + wav(16000, 1, [i * 97 % 2000 - 1000 for i in range(64)]))
    write("wav_reader", bytes([7]) + wav(22050, 2, list(range(-40, 40)), 0xFFFFFFFF, b"LIST\x05\x00\x00\x00abcde\x00"))


def prekey():
    write("prekey_open", bytes([2]))
    write("prekey_open", bytes([3]))


SDP_OFFER = "\r\n".join([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "a=group:BUNDLE 0", "a=extmap-allow-mixed", "a=msid-semantic: WMS s1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0 8", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0",
    "a=ice-ufrag:vbMB", "a=ice-pwd:0123456789abcdefghijklmn", "a=ice-options:trickle",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=sendrecv",
    "a=msid:s1 t1", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1", "a=rtpmap:63 red/48000/2", "a=fmtp:63 111/111",
    "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=ssrc:3735928559 cname:abcdefgh",
    "a=ssrc:3735928559 msid:s1 t1", ""])
SDP_ANSWER = SDP_OFFER.replace("a=setup:actpass", "a=setup:active").replace(
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0 8", "m=audio 9 UDP/TLS/RTP/SAVPF 111")

TYPES = ["m.call.invite", "m.call.candidates", "m.call.answer", "m.call.select_answer",
         "m.call.negotiate", "m.call.reject", "m.call.hangup",
         "m.call.sdp_stream_metadata_changed", "org.oraclecalls.call.confirm"]


def direct():
    common = {"call_id": "1796406079445Gff4oXja6LgtI0o7", "party_id": "VHPPTOXURU", "version": "1"}
    # The binding extension: P-256's generator as the (uncompressed) ephemeral key.
    g = bytes.fromhex("04"
                      "6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
                      "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5")
    ext = {"org.oraclecalls.direct.v1": {"v": 1, "dh": b64u(g), "nonce": b64u(bytes(range(32)))}}
    events = [
        ("m.call.invite", {**common, "lifetime": 60000, "invitee": "@bob:localhost",
                           "offer": {"type": "offer", "sdp": SDP_OFFER},
                           "sdp_stream_metadata": {"s1": {"purpose": "m.usermedia"}}, **ext}),
        ("m.call.candidates", {**common, "candidates": [
            {"candidate": "candidate:1 1 udp 41885439 127.0.0.1 49163 typ relay raddr 0.0.0.0 rport 0",
             "sdpMid": "0", "sdpMLineIndex": 0}, {"candidate": ""}]}),
        ("m.call.answer", {**common, "answer": {"type": "answer", "sdp": SDP_ANSWER}, **ext}),
        ("m.call.select_answer", {**common, "selected_party_id": "TLFONSJIST"}),
        ("m.call.negotiate", {**common, "lifetime": 10000,
                              "description": {"type": "offer", "sdp": SDP_OFFER}}),
        ("m.call.reject", common),
        ("m.call.hangup", {**common, "reason": "ice_timeout"}),
        ("m.call.sdp_stream_metadata_changed", {**common, "sdp_stream_metadata": {}}),
        ("org.oraclecalls.call.confirm", {**common, "mac": b64u(bytes(32))}),
    ]
    for event_type, content in events:
        write("direct_signal", bytes([TYPES.index(event_type)]) + json.dumps(content).encode())
    write("direct_sdp", SDP_OFFER.encode())
    write("direct_sdp", SDP_ANSWER.encode())


def stun(msg_type, attrs):
    body = b"".join(struct.pack(">HH", t, len(v)) + v + b"\x00" * (-len(v) % 4) for t, v in attrs)
    return struct.pack(">HHI", msg_type, len(body), 0x2112A442) + bytes(12) + body


def xor_addr(port, ip):
    return struct.pack(">BBH", 0, 1, port ^ 0x2112) + bytes(a ^ b for a, b in zip(ip, b"\x21\x12\xa4\x42"))


def turn():
    # 401 to the first Allocate: ERROR-CODE, REALM, NONCE.
    write("turn_response", stun(0x0113, [(0x0009, b"\x00\x00\x04\x01Unauthorized"),
                                         (0x0014, b"oracle-calls.test"), (0x0015, b"abcdef0123456789")]))
    # Allocate success: XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS, LIFETIME.
    write("turn_response", stun(0x0103, [(0x0016, xor_addr(49152, bytes([127, 0, 0, 1]))),
                                         (0x0020, xor_addr(40000, bytes([127, 0, 0, 1]))),
                                         (0x000D, struct.pack(">I", 600))]))
    # ChannelData on channel 0x4000.
    write("turn_response", struct.pack(">HH", 0x4000, 4) + b"ping")


for t in ("kt_verify", "wav_reader", "prekey_open", "direct_signal", "direct_sdp", "turn_response"):
    shutil.rmtree(SEEDS / t, ignore_errors=True)
kt()
speech()
prekey()
direct()
turn()
