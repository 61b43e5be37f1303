"""Tests of oc_speech_server against the real engines: Whisper base (the model that
scripts/speech-setup assembles) and espeak-ng.

    scripts/speech-setup && . <(scripts/speech-setup env | sed 's/^/export /')
    $OC_SPEECH_PYTHON -m pytest speech/sidecar -q -s      (-s shows the WER and latency table)

The model directory comes from $OC_WHISPER_MODEL_DIR, else from the env file that
scripts/speech-setup writes; without either the tests fail and say so.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import wave
from pathlib import Path

import numpy as np
import oc_speech_server as srv
import pytest

HERE = Path(__file__).resolve().parent
SERVER = HERE / "oc_speech_server.py"
ESPEAK = shutil.which("espeak-ng")
MAX_BODY = 4 * 1024 * 1024

# (text, espeak-ng voice, words per minute, how the test sends it: rate and channels)
CORPUS = [
    ("What is the weather going to be like tomorrow in London?", "en-us", 175, (22050, 1)),
    ("Please tell me a short story about a friendly robot.", "en-gb", 150, (16000, 1)),
    ("Can you remind me to call my sister at seven tonight?", "en-gb-x-rp", 160, (44100, 1)),
    ("How far away is the moon from the earth?", "en-us+f2", 190, (48000, 2)),
    ("Turn off the lights in the kitchen, please.", "en-us+m3", 210, (24000, 1)),
]


# ------------------------------------------------------------------ helpers


def model_dir() -> str:
    d = os.environ.get("OC_WHISPER_MODEL_DIR")
    if not d:
        home = os.environ.get("OC_SPEECH_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "oracle-calls", "speech"
        )
        env = Path(home) / "env"
        if env.is_file():
            for line in env.read_text().splitlines():
                if line.startswith("OC_WHISPER_MODEL_DIR="):
                    d = line.split("=", 1)[1]
    assert d and Path(d, "model.bin").is_file(), (
        "no Whisper model: run scripts/speech-setup (or set OC_WHISPER_MODEL_DIR)"
    )
    return d


class Server:
    def __init__(self, *args: str, env: dict[str, str] | None = None):
        full_env = {k: v for k, v in os.environ.items() if k != "OC_SPEECH_API_KEY"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            text=True,
        )
        self.stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        line = self._ready_line(120.0)
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert m, f"unexpected readiness line {line!r}; stderr: {''.join(self.stderr)[-2000:]}"
        self.port = int(m.group(1))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _ready_line(self, timeout: float) -> str:
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        assert result and result[0], f"server not ready in {timeout}s; stderr: {''.join(self.stderr)[-2000:]}"
        return result[0]

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -999


@pytest.fixture(scope="module")
def server():
    s = Server("--model-dir", model_dir(), "--max-body-bytes", str(MAX_BODY))
    yield s
    rc = s.stop()
    log = "".join(s.stderr)
    assert rc == 0, f"SIGTERM did not stop the server cleanly (rc {rc}); stderr: {log[-2000:]}"
    assert "stopped" in log


def espeak_pcm(text: str, voice: str, wpm: int) -> tuple[np.ndarray, int]:
    assert ESPEAK, "espeak-ng is not installed (scripts/speech-setup installs it)"
    p = subprocess.run(
        [ESPEAK, "--stdin", "--stdout", "-v", voice, "-s", str(wpm)],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    data = p.stdout
    assert data[:4] == b"RIFF" and data[36:40] == b"data"
    (rate,) = struct.unpack_from("<I", data, 24)
    return np.frombuffer(data[44 : len(data) - (len(data) - 44) % 2], dtype="<i2").astype(np.float64), rate


def resample_linear(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """The test's own (different) resampler: linear interpolation, so the server's FFT
    resampler is not checked against itself."""
    n = round(len(x) * dst / src)
    return np.interp(np.arange(n) * src / dst, np.arange(len(x)), x)


def wav_file(samples: np.ndarray, rate: int, channels: int = 1, bits: int = 16, tag: int = 1) -> bytes:
    s = np.clip(np.round(samples), -32768, 32767).astype("<i2")
    if channels > 1:
        s = np.repeat(s[:, None], channels, axis=1).reshape(-1)
    data = s.tobytes()
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    # An extra chunk before fmt, as some writers add, must be skipped.
    junk = b"LIST" + struct.pack("<I", 3) + b"abc\x00"
    body = b"WAVE" + junk + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def multipart(fields: dict[str, str], file: bytes | None, filename: str = "audio.wav") -> tuple[bytes, str]:
    boundary = "oc" + uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    if file is not None:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
            + file
            + b"\r\n"
        )
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def transcribe(server: Server, wav: bytes, **fields: str):
    body, ctype = multipart({"model": "whisper-1", **fields}, wav)
    t0 = time.monotonic()
    status, headers, data = server.request("POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype})
    return status, headers, data, time.monotonic() - t0


def speech(server: Server, obj, ctype: str = "application/json"):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return server.request("POST", "/v1/audio/speech", body, {"Content-Type": ctype})


NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def words(s: str) -> list[str]:
    """Lower case, no punctuation, small numbers as words (Whisper writes "10" for "ten")."""
    out = []
    for w in re.sub(r"[^a-z0-9' ]+", " ", s.lower()).split():
        out.append(NUMBERS[int(w)] if w.isdigit() and int(w) < len(NUMBERS) else w)
    return out


def edit_distance(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        cur = [i]
        for j, wb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wa != wb)))
        prev = cur
    return prev[-1]


def wer(ref: str, hyp: str) -> float:
    r = words(ref)
    return edit_distance(r, words(hyp)) / len(r)


def assert_error(status: int, headers: dict, data: bytes, want_status: int, want_code: str | None = None):
    assert status == want_status, (status, data[:300])
    assert headers.get("Content-Type") == "application/json"
    err = json.loads(data)["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == ("server_error" if want_status >= 500 else "invalid_request_error")
    if want_code is not None:
        assert err["code"] == want_code, err


def test_wer_helper():
    assert wer("the cat sat", "The cat sat.") == 0.0
    assert wer("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    assert wer("a b c d", "a c d e") == 0.5
    assert wer("opens at ten", "Opens at 10.") == 0.0


# ------------------------------------------------------------------ the server's own parts


@pytest.mark.parametrize(
    ("src", "dst"), [(22050, 24000), (48000, 16000), (44100, 16000), (8000, 16000), (24000, 16000), (44101, 16000)]
)
def test_resample_keeps_a_tone(src, dst):
    n = 2 * src + 7
    x = np.sin(2 * np.pi * 1000 * np.arange(n) / src).astype(np.float32)
    y = srv.resample(x, src, dst)
    assert len(y) == round(n * dst / src)
    ref = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / dst)
    mid = slice(len(y) // 4, 3 * len(y) // 4)
    assert np.max(np.abs(y[mid] - ref[mid])) < 1e-3


def test_resample_removes_what_the_target_rate_cannot_hold():
    # 16 kHz holds up to 8 kHz: a 7 kHz tone stays, a 9 kHz tone must vanish (not alias to 7 kHz).
    src, dst, n = 48000, 16000, 48000
    t = np.arange(n) / src
    keep = srv.resample(np.sin(2 * np.pi * 7000 * t).astype(np.float32), src, dst)
    gone = srv.resample(np.sin(2 * np.pi * 9000 * t).astype(np.float32), src, dst)
    assert rms(keep) > 0.6 and rms(gone) < 0.01


def test_smooth_lengths():
    got = [srv.smooth_at_least(m) for m in (1, 2, 7, 11, 17, 121, 1000, 1025)]
    assert got == [1, 2, 8, 12, 18, 125, 1000, 1080]


def test_parse_wav_variants():
    pcm = (np.sin(np.arange(1000) / 5) * 10000).round()
    plain = srv.parse_wav(wav_file(pcm, 16000))
    assert plain.rate == 16000 and len(plain.samples) == 1000
    assert np.allclose(plain.samples * 32768, pcm, atol=0.5)
    stereo = srv.parse_wav(wav_file(pcm, 44100, channels=2))
    assert stereo.rate == 44100 and np.allclose(stereo.samples, plain.samples)
    # A data chunk whose size is larger than the file (a WAV written to a pipe).
    piped = bytearray(wav_file(pcm, 22050))
    data_at = piped.find(b"data")
    piped[data_at + 4 : data_at + 8] = struct.pack("<I", 0x7FFFF000)
    assert len(srv.parse_wav(bytes(piped)).samples) == 1000
    # WAVE_FORMAT_EXTENSIBLE with the PCM sub-format.
    ext = bytearray(wav_file(pcm, 16000))
    fmt_at = ext.find(b"fmt ")
    body = bytes(ext[fmt_at + 8 : fmt_at + 24])
    ext_fmt = struct.pack("<H", 0xFFFE) + body[2:] + struct.pack("<HHIH", 22, 16, 4, 1) + bytes(14)
    ext = ext[:fmt_at] + b"fmt " + struct.pack("<I", len(ext_fmt)) + ext_fmt + ext[fmt_at + 24 :]
    ext[4:8] = struct.pack("<I", len(ext) - 8)
    assert len(srv.parse_wav(bytes(ext)).samples) == 1000
    for bad in (b"", b"RIFF", b"RIFF\0\0\0\0WAVE", b"RIFX" + bytes(40), wav_file(pcm, 16000, bits=8)):
        with pytest.raises(srv.ApiError) as e:
            srv.parse_wav(bad)
        assert e.value.status == 400


# ------------------------------------------------------------------ speech to text


def test_transcribes_espeak_corpus(server):
    """Each sentence twice: with the language detected (the default) and with language=en,
    which skips Whisper's language detection pass. The WER bound holds for both."""
    rows = []
    for language in ("", "en"):
        total_err = 0
        total_words = 0
        for text, voice, wpm, (rate, channels) in CORPUS:
            pcm, native = espeak_pcm(text, voice, wpm)
            audio_s = len(pcm) / native
            wav = wav_file(resample_linear(pcm, native, rate), rate, channels)
            fields = {"language": language} if language else {}
            status, headers, data, wall = transcribe(server, wav, **fields)
            assert status == 200, data
            assert headers["Content-Type"] == "application/json"
            hyp = json.loads(data)["text"]
            e = edit_distance(words(text), words(hyp))
            total_err += e
            total_words += len(words(text))
            rows.append((language or "auto", voice, wpm, rate, channels, audio_s, wall, e / len(words(text)), hyp))
        corpus_wer = total_err / total_words
        rows.append(f"language={language or 'auto'}: corpus WER {corpus_wer:.3f} over {total_words} words")
        assert corpus_wer <= 0.10, rows
    print("\nlang  voice           wpm   rate ch  audio_s  wall_s    rtf   wer  transcript")
    for row in rows:
        if isinstance(row, str):
            print(row)
            continue
        lang, voice, wpm, rate, ch, audio_s, wall, w, hyp = row
        print(
            f"{lang:5s} {voice:14s} {wpm:4d} {rate:6d} {ch:2d} {audio_s:8.2f} {wall:7.2f} {wall / audio_s:6.3f} "
            f"{w:5.2f}  {hyp}"
        )


def test_response_formats_and_language(server):
    pcm, rate = espeak_pcm("Good morning, my friend.", "en-us", 175)
    wav = wav_file(pcm, rate)
    status, headers, data, _ = transcribe(server, wav, response_format="text", language="en")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert wer("good morning my friend", data.decode()) == 0.0, data
    status, _, data, _ = transcribe(server, wav, response_format="verbose_json")
    assert status == 200
    v = json.loads(data)
    assert v["task"] == "transcribe" and v["language"] == "en"
    assert v["duration"] == pytest.approx(len(pcm) / rate, abs=0.01)
    assert v["segments"] and v["segments"][0]["end"] > v["segments"][0]["start"]
    assert v["text"].strip() == "".join(s["text"] for s in v["segments"]).strip()


def test_concurrent_transcriptions_are_serialized_and_both_answered(server):
    text = "Turn off the lights in the kitchen, please."
    pcm, rate = espeak_pcm(text, "en-us", 175)
    wav = wav_file(pcm, rate)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(transcribe(server, wav))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2
    for status, _, data, _ in results:
        assert status == 200
        assert wer(text, json.loads(data)["text"]) <= 0.1


# ------------------------------------------------------------------ text to speech


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def test_speech_wav_and_pcm_round_trip(server):
    text = "The library opens at ten in the morning."
    status, headers, wav = speech(server, {"model": "tts-1", "input": text, "voice": "en-us"})
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    assert int(headers["Content-Length"]) == len(wav)
    import io

    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        frames = w.readframes(w.getnframes())
        assert len(frames) == w.getnframes() * 2 == len(wav) - 44
    samples = np.frombuffer(frames, dtype="<i2")
    assert len(samples) / 24000 > 1.0
    assert rms(samples) > 500, "speech is silent"

    status, headers, pcm = speech(server, {"model": "tts-1", "input": text, "response_format": "pcm"})
    assert status == 200 and headers["Content-Type"] == "audio/pcm" and headers["X-Sample-Rate"] == "24000"
    assert pcm == frames, "pcm is the same 24 kHz s16le audio as the wav's data"

    for audio in (wav, wav_file(np.frombuffer(pcm, dtype="<i2").astype(np.float64), 24000)):
        status, _, data, _ = transcribe(server, audio)
        assert status == 200
        got = json.loads(data)["text"]
        assert wer(text, got) <= 0.10, got


def test_speech_voices_and_speed(server):
    text = "Seven silver swans swam south."
    lengths = {}
    for speed in (1.0, 2.0):
        status, _, pcm = speech(server, {"model": "tts-1", "input": text, "response_format": "pcm", "speed": speed})
        assert status == 200
        lengths[speed] = len(pcm)
    assert lengths[2.0] < 0.75 * lengths[1.0], lengths
    # OpenAI's voice names map to espeak-ng voices; espeak-ng variants work too.
    a = speech(server, {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"})
    b = speech(server, {"model": "tts-1", "input": text, "voice": "en-us+f3", "response_format": "pcm"})
    assert a[0] == 200 and b[0] == 200 and a[2] != b[2]
    assert rms(np.frombuffer(b[2], dtype="<i2")) > 500


# ------------------------------------------------------------------ error paths


def test_transcription_errors(server):
    pcm, rate = espeak_pcm("Hello.", "en-us", 175)
    good = wav_file(pcm, rate)
    path = "/v1/audio/transcriptions"

    def post(body: bytes, ctype: str):
        return server.request("POST", path, body, {"Content-Type": ctype})

    assert_error(*post(b'{"file": 1}', "application/json"), 400, "invalid_content_type")
    assert_error(*post(b"no boundary here", "multipart/form-data"), 400, "invalid_multipart")
    assert_error(*post(b"--xyz\r\nbroken", "multipart/form-data; boundary=xyz"), 400, "invalid_multipart")
    body, ctype = multipart({"model": "whisper-1"}, good)
    assert_error(*post(body[: len(body) // 2], ctype), 400, "invalid_multipart")  # not closed
    assert_error(*post(*multipart({"model": "whisper-1"}, None)), 400, "missing_file")
    assert_error(*post(*multipart({}, good)), 400, "missing_model")
    assert_error(*post(*multipart({"model": "whisper-1"}, b"ID3\x03 this is an mp3")), 400, "invalid_audio")
    assert_error(*post(*multipart({"model": "whisper-1"}, good[:30])), 400, "invalid_audio")
    float_wav = wav_file(pcm, rate, bits=32, tag=3)
    assert_error(*post(*multipart({"model": "whisper-1"}, float_wav)), 400, "invalid_audio")
    no_data = good[:12] + good[12:][: good.find(b"data") - 12]
    assert_error(*post(*multipart({"model": "whisper-1"}, no_data)), 400, "invalid_audio")
    assert_error(
        *post(*multipart({"model": "whisper-1", "response_format": "srt"}, good)), 400, "invalid_response_format"
    )
    assert_error(*post(*multipart({"model": "whisper-1", "language": "klingon"}, good)), 400, "invalid_language")
    assert_error(*post(*multipart({"model": "whisper-1", "temperature": "hot"}, good)), 400, "invalid_value")
    assert_error(*post(*multipart({"model": "whisper-1"}, wav_file(np.zeros(0), 16000))), 400, "audio_empty")
    # 121 s of (quiet) audio at 1 kHz: small in bytes, over the 120 s limit.
    long_wav = wav_file(np.full(121_000, 3.0), 1000)
    assert_error(*post(*multipart({"model": "whisper-1"}, long_wav)), 400, "audio_too_long")


def test_speech_errors(server):
    ok = {"model": "tts-1", "input": "Hello."}
    assert_error(*speech(server, b"{not json", "application/json"), 400, "invalid_json")
    assert_error(*speech(server, b"[1, 2]", "application/json"), 400, "invalid_json")
    assert_error(*speech(server, b"\xff\xfe", "application/json"), 400, "invalid_json")
    assert_error(*speech(server, ok, "text/plain"), 400, "invalid_content_type")
    assert_error(*speech(server, b'{"model": "tts-1", "input": "\\ud800"}', "application/json"), 400, "invalid_input")
    assert_error(*speech(server, b"[" * 100_000 + b"]" * 100_000, "application/json"), 400, "invalid_json")
    assert_error(*speech(server, {"input": "Hello."}), 400, "missing_model")
    assert_error(*speech(server, {"model": "tts-1"}), 400, "invalid_input")
    assert_error(*speech(server, {**ok, "input": "   "}), 400, "invalid_input")
    assert_error(*speech(server, {**ok, "input": "a" * 4097}), 400, "input_too_long")
    assert_error(*speech(server, {**ok, "response_format": "mp3"}), 400, "invalid_response_format")
    assert_error(*speech(server, {**ok, "speed": 9}), 400, "invalid_value")
    assert_error(*speech(server, {**ok, "speed": "fast"}), 400, "invalid_value")
    assert_error(*speech(server, {**ok, "voice": "../../etc/passwd"}), 400, "invalid_voice")
    assert_error(*speech(server, {**ok, "voice": "-q"}), 400, "invalid_voice")
    assert_error(*speech(server, {**ok, "voice": "xx-nosuchvoice"}), 400, "invalid_voice")
    # Control characters are dropped, not passed to espeak-ng; the 4096-character input works.
    status, _, pcm = speech(server, {**ok, "input": "Hi\x00 there\x1b[31m.", "response_format": "pcm"})
    assert status == 200 and len(pcm) > 0
    status, _, _ = speech(server, {**ok, "input": "word " * 819, "response_format": "pcm"})
    assert status == 200


def test_http_errors(server):
    assert_error(*server.request("GET", "/v1/nothing"), 404, "not_found")
    assert_error(*server.request("GET", "/v1/audio/speech"), 405, "method_not_allowed")
    status, headers, data = server.request("DELETE", "/health")
    assert_error(status, headers, data, 405)
    assert headers["Allow"] == "GET, HEAD"
    # A declared body over the cap is refused before it is read.
    c = server.conn()
    c.putrequest("POST", "/v1/audio/transcriptions")
    c.putheader("Content-Type", "multipart/form-data; boundary=x")
    c.putheader("Content-Length", str(MAX_BODY + 1))
    c.endheaders()
    r = c.getresponse()
    assert_error(r.status, dict(r.getheaders()), r.read(), 413, "body_too_large")
    c.close()
    # A chunked body over the cap too: one small chunk, then one declared over the cap.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n%x\r\n' % MAX_BODY
        )
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_too_large"
    # A small chunked body is accepted.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        body = json.dumps({"model": "tts-1", "input": "Hi.", "response_format": "pcm"}).encode()
        s.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b"%x\r\n" % 5
            + body[:5]
            + b"\r\n"
            + b"%x\r\n" % (len(body) - 5)
            + body[5:]
            + b"\r\n0\r\n\r\n"
        )
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    # No Content-Length on a POST.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 411 ")
    # Garbage instead of HTTP, and an unknown method: JSON errors, and the server lives on.
    for raw, want in (
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"HTTP/1.1 400 "),
        (b"BREW /health HTTP/1.1\r\n\r\n", b"HTTP/1.1 501 "),
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(raw)
            reply = read_all(s)
        assert reply.startswith((want, want.replace(b"1.1", b"1.0"))), reply[:200]
        assert b'"error"' in reply
    status, _, data = server.request("GET", "/health")
    assert status == 200 and json.loads(data)["status"] == "ok"


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not b:
            break
        out += b
        head, sep, rest = out.partition(b"\r\n\r\n")
        m = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        if sep and m and len(rest) >= int(m.group(1)):
            break
    return out


def test_models_and_health(server):
    status, _, data = server.request("GET", "/v1/models")
    assert status == 200
    ids = {m["id"] for m in json.loads(data)["data"]}
    assert ids == {"whisper-base", "espeak-ng"}
    status, headers, data = server.request("HEAD", "/health")
    assert status == 200 and data == b"" and int(headers["Content-Length"]) > 0


def test_api_key(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    for s in (
        Server("--tts-only", "--api-key-file", str(key_file)),
        Server("--tts-only", env={"OC_SPEECH_API_KEY": "s3cret-key"}),
    ):
        try:
            req = {"model": "tts-1", "input": "Hi.", "response_format": "pcm"}
            body = json.dumps(req).encode()
            h = {"Content-Type": "application/json"}
            status, headers, data = s.request("POST", "/v1/audio/speech", body, h)
            assert_error(status, headers, data, 401, "invalid_api_key")
            assert headers["WWW-Authenticate"] == "Bearer"
            bad = {**h, "Authorization": "Bearer s3cret-kez"}
            assert_error(*s.request("POST", "/v1/audio/speech", body, bad), 401, "invalid_api_key")
            assert_error(*s.request("GET", "/v1/models", None, {"Authorization": "Basic s3cret-key"}), 401)
            good = {**h, "Authorization": "Bearer s3cret-key"}
            status, _, pcm = s.request("POST", "/v1/audio/speech", body, good)
            assert status == 200 and len(pcm) > 1000
            # --tts-only: no transcriptions here.
            assert_error(*s.request("POST", "/v1/audio/transcriptions", b"", good), 404, "not_found")
            status, _, _ = s.request("GET", "/health")
            assert status == 200  # health needs no key
            assert "s3cret" not in "".join(s.stderr)
        finally:
            assert s.stop() == 0


def test_engine_failure_is_a_500(tmp_path):
    # An espeak-ng that works once (the server's start-up check) and then fails.
    fake = tmp_path / "espeak-flaky"
    marker = tmp_path / "used"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{marker}" ]; then echo "engine exploded" >&2; exit 3; fi\n'
        f'touch "{marker}"\n'
        f'exec "{ESPEAK}" "$@"\n'
    )
    fake.chmod(0o755)
    s = Server("--tts-only", "--espeak", str(fake))
    try:
        status, headers, data = speech(s, {"model": "tts-1", "input": "Hello."})
        assert_error(status, headers, data, 500, "engine_failed")
        assert "engine exploded" in json.loads(data)["error"]["message"]
        status, _, _ = s.request("GET", "/health")
        assert status == 200
    finally:
        assert s.stop() == 0


def test_bad_model_dir_fails_fast(tmp_path):
    p = subprocess.run(
        [sys.executable, str(SERVER), "--port", "0", "--model-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert "model.bin" in p.stderr
    p = subprocess.run(
        [sys.executable, str(SERVER), "--port", "0", "--tts-only", "--api-key-file", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1 and p.stdout == ""
    assert "cannot read --api-key-file" in p.stderr and "Traceback" not in p.stderr


def test_keep_alive_across_requests_and_errors(server):
    # One connection, as a pooling client (reqwest) uses it: answers, a 400 whose body was read,
    # a 404, then answers again.
    c = server.conn()
    sock = None
    try:
        for method, path, body, want in (
            ("GET", "/health", None, 200),
            ("POST", "/v1/audio/speech", json.dumps({"model": "tts-1"}).encode(), 400),
            ("GET", "/nowhere", None, 404),
            ("POST", "/v1/audio/speech", json.dumps({"model": "tts-1", "input": "Hi."}).encode(), 200),
            ("GET", "/v1/models", None, 200),
        ):
            c.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == want, (method, path, r.status)
            assert r.getheader("Connection") != "close"
            sock = sock or c.sock
            assert sock is not None and c.sock is sock, "the connection was not kept"
    finally:
        c.close()


def test_mutated_uploads_raise_only_api_errors():
    # The parsers on 3000 mutations of a valid upload (seeded): either a result or an ApiError
    # (a 400), never another exception (a 500 or a dead handler thread).
    rng = np.random.default_rng(14)
    pcm = (np.sin(np.arange(400) / 3) * 8000).round()
    body, ctype = multipart({"model": "whisper-1", "language": "en"}, wav_file(pcm, 16000, channels=2))
    outcomes = {"ok": 0, "error": 0}
    for i in range(3000):
        b = bytearray(body)
        for _ in range(int(rng.integers(1, 6))):
            op = rng.integers(0, 3)
            at = int(rng.integers(0, len(b)))
            if op == 0:
                b[at] = int(rng.integers(0, 256))
            elif op == 1:
                del b[at : at + int(rng.integers(1, 64))]
            else:
                b[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
        try:
            parts = srv.parse_multipart(bytes(b), ctype if i % 7 else ctype + "; charset=x")
            for p in parts:
                if p.name == "file":
                    audio = srv.parse_wav(p.data)
                    assert len(srv.resample(audio.samples, audio.rate, 16000)) == round(
                        len(audio.samples) * 16000 / audio.rate
                    )
            outcomes["ok"] += 1
        except srv.ApiError as e:
            assert e.status == 400
            outcomes["error"] += 1
    assert outcomes["ok"] > 100 and outcomes["error"] > 100, outcomes
