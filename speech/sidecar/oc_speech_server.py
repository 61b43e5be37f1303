#!/usr/bin/env python3
"""oc_speech_server: the speech oracle's offline speech engines behind the OpenAI audio API.

A small, project-owned HTTP server (standard library only, plus the numpy and faster-whisper of
the "stt" venv that scripts/speech-setup builds) that gives the Rust OpenAI-compatible
providers a real local peer:

  POST /v1/audio/transcriptions  multipart/form-data: file (WAV, PCM 16-bit, any channel count
                                 up to 8 and any rate), model, language?, prompt?,
                                 response_format? (json | text | verbose_json), temperature?
                                 -> Whisper base (CTranslate2 int8) through faster-whisper
  POST /v1/audio/speech          JSON {model, input, voice?, response_format? (wav | pcm),
                                 speed?} -> espeak-ng, run as a separate process (GPL; never
                                 linked), text on its stdin; wav or raw s16le mono at 24 kHz
  GET  /v1/models, GET /health

Errors are OpenAI's shape: {"error": {"message", "type", "code"}} with 400/401/404/405/411/
413/500. Ready when it prints `listening on http://HOST:PORT` on stdout (one line, flushed);
logs go to stderr, one line per request, without audio or text content.

Run: $OC_SPEECH_PYTHON speech/sidecar/oc_speech_server.py --model-dir $OC_WHISPER_MODEL_DIR
     [--host 127.0.0.1] [--port 0] [--threads 1] [--beam-size 1] [--api-key-file F]
The API key, when wanted, comes from $OC_SPEECH_API_KEY or --api-key-file, never from argv.
"""

from __future__ import annotations

import argparse
import hmac
import http.server
import json
import logging
import math
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

# Nothing may come from a model hub: faster-whisper goes through huggingface_hub only when the
# model is a name, and these make sure it could not download even then.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # after the environment above: faster-whisper imports huggingface_hub

LOG = logging.getLogger("oc-speech")

WHISPER_RATE = 16_000
# OpenAI's `pcm` speech format: raw 16-bit little-endian mono at 24 kHz. `wav` uses the same.
SPEECH_RATE = 24_000
ESPEAK_WPM = 175  # espeak-ng's default speed; OpenAI's speed 1.0
ESPEAK_MIN_WPM, ESPEAK_MAX_WPM = 80, 450  # espeak-ng's documented range for -s
VOICE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9+_-]{0,63}$")
# OpenAI's voice names, so an unchanged OpenAI client works: each maps to an espeak-ng voice.
OPENAI_VOICES = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en-gb",
    "coral": "en-us+f3",
    "echo": "en-us+m2",
    "fable": "en-gb-x-rp",
    "nova": "en-us+f2",
    "onyx": "en-us+m7",
    "sage": "en-us+f4",
    "shimmer": "en-us+f5",
    "verse": "en-gb-scotland",
}
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")
SPEECH_FORMATS = ("wav", "pcm")
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32


class ApiError(Exception):
    """An error answered to the client in OpenAI's JSON shape."""

    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        405: "invalid_request_error",
        411: "invalid_request_error",
        413: "invalid_request_error",
        500: "server_error",
        503: "server_error",
    }

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> bytes:
        err = {
            "message": self.message,
            "type": self.TYPES.get(self.status, "invalid_request_error"),
            "param": self.param,
            "code": self.code,
        }
        return json.dumps({"error": err}).encode()


# ---------------------------------------------------------------- multipart/form-data


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """Splits `type/sub; a=b; c="d"` into its main value and lower-cased parameters."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    # A parameter value is a token or a quoted string (backslash escapes inside quotes).
    for m in re.finditer(r'\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*;?', rest):
        key, val = m.group(1).lower(), m.group(2).strip()
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        params[key] = val
    return main.strip().lower(), params


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    main, params = header_params(content_type)
    if main != "multipart/form-data":
        raise ApiError(400, "Content-Type must be multipart/form-data", "invalid_content_type")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "multipart/form-data without a valid boundary", "invalid_multipart")
    delim = b"--" + boundary.encode("latin-1", "replace")
    if not body.startswith(delim):
        # A preamble is allowed before the first delimiter line.
        first = body.find(b"\r\n" + delim)
        if first < 0:
            raise ApiError(400, "multipart body has no boundary delimiter", "invalid_multipart")
        body = body[first + 2 :]
    parts: list[Part] = []
    pos = 0
    closed = False
    while True:
        if not body.startswith(delim, pos):
            raise ApiError(400, "multipart body is malformed", "invalid_multipart")
        pos += len(delim)
        if body.startswith(b"--", pos):
            closed = True
            break
        # Transport padding after the delimiter, then CRLF.
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise ApiError(400, "multipart delimiter line is malformed", "invalid_multipart")
        pos = eol + 2
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise ApiError(400, "multipart part without a header end", "invalid_multipart")
        headers: dict[str, str] = {}
        for line in body[pos:head_end].split(b"\r\n"):
            if not line:
                continue
            key, sep, val = line.partition(b":")
            if not sep:
                raise ApiError(400, "multipart part header is malformed", "invalid_multipart")
            headers[key.strip().lower().decode("latin-1")] = val.strip().decode("utf-8", "replace")
        pos = head_end + 4
        nxt = body.find(b"\r\n" + delim, pos)
        if nxt < 0:
            raise ApiError(400, "multipart part is not terminated", "invalid_multipart")
        data = body[pos:nxt]
        pos = nxt + 2
        disp, dparams = header_params(headers.get("content-disposition", ""))
        if disp != "form-data" or "name" not in dparams:
            raise ApiError(400, "multipart part without Content-Disposition: form-data; name=", "invalid_multipart")
        ctype = headers.get("content-type")
        parts.append(Part(dparams["name"], dparams.get("filename"), ctype, data))
        if len(parts) > MAX_PARTS:
            raise ApiError(400, f"more than {MAX_PARTS} multipart parts", "invalid_multipart")
    if not closed:
        raise ApiError(400, "multipart body is not closed", "invalid_multipart")
    return parts


# ---------------------------------------------------------------- WAV and resampling


@dataclass
class Pcm:
    samples: np.ndarray  # float32, mono, in [-1, 1)
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate if self.rate else 0.0


def parse_wav(data: bytes) -> Pcm:
    """PCM 16-bit WAV (RIFF/WAVE, WAVE_FORMAT_PCM or EXTENSIBLE with the PCM sub-format), any
    rate, 1-8 channels mixed to mono. A data chunk whose size runs past the end of the file (a
    WAV written to a pipe, as `espeak-ng --stdout` does) is cut at the end of the file."""
    if len(data) < 12 or data[0:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ApiError(400, "the file is not a WAV (RIFF/WAVE) file", "invalid_audio")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body_start = pos + 8
        if cid == b"fmt ":
            if size < 16 or body_start + size > len(data):
                raise ApiError(400, "WAV fmt chunk is truncated", "invalid_audio")
            tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", data, body_start)
            if tag == 0xFFFE:
                if size < 40:
                    raise ApiError(400, "WAV extensible fmt chunk is truncated", "invalid_audio")
                (tag,) = struct.unpack_from("<H", data, body_start + 24)
            if tag != 1:
                raise ApiError(400, f"WAV format tag {tag} is not PCM (only 16-bit PCM is accepted)", "invalid_audio")
            if bits != 16:
                raise ApiError(400, f"WAV has {bits}-bit samples; only 16-bit PCM is accepted", "invalid_audio")
            if not 1 <= channels <= 8:
                raise ApiError(400, f"WAV has {channels} channels (1-8 accepted)", "invalid_audio")
            if not 1000 <= rate <= 384_000:
                raise ApiError(400, f"WAV sample rate {rate} Hz is out of range", "invalid_audio")
            if block_align != 2 * channels:
                raise ApiError(400, "WAV block alignment does not match its channels", "invalid_audio")
            fmt = (tag, channels, rate, block_align)
        elif cid == b"data":
            if fmt is None:
                raise ApiError(400, "WAV data chunk comes before its fmt chunk", "invalid_audio")
            _, channels, rate, block_align = fmt
            end = min(len(data), body_start + size)
            usable = (end - body_start) // block_align * block_align
            raw = np.frombuffer(data, dtype="<i2", count=usable // 2, offset=body_start)
            mono = raw.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
            return Pcm(mono.astype(np.float32), rate)
        pos = body_start + size + (size & 1)
    raise ApiError(400, "WAV file has no data chunk", "invalid_audio")


def smooth_at_least(m: int) -> int:
    """The smallest 2^a * 3^b * 5^c >= m (a length the FFT handles fast)."""
    best = 1 << max(0, (m - 1).bit_length())
    p3 = 1
    while p3 < best:
        p35 = p3
        while p35 < best:
            v = p35
            while v < m:
                v *= 2
            best = min(best, v)
            p35 *= 5
        p3 *= 3
    return best


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling through the spectrum. The input is padded with silence to
    k * (src / gcd) samples, k 5-smooth, so both transforms have fast lengths (an utterance's
    own length is often a large prime times something) and the output is exactly k * (dst / gcd)
    samples before it is cut to length; the padding also keeps the end from wrapping onto the
    start."""
    if src == dst or len(x) == 0:
        return x.astype(np.float32)
    g = math.gcd(src, dst)
    down, up = src // g, dst // g
    n_out = max(1, round(len(x) * dst / src))
    k = smooth_at_least(-(-len(x) // down))
    n_in, n_full = k * down, k * up
    padded = np.zeros(n_in, dtype=np.float64)
    padded[: len(x)] = x
    spec = np.fft.rfft(padded)
    keep = min(len(spec), n_full // 2 + 1)
    out_spec = np.zeros(n_full // 2 + 1, dtype=np.complex128)
    out_spec[:keep] = spec[:keep]
    y = np.fft.irfft(out_spec, n_full) * (n_full / n_in)
    return y[:n_out].astype(np.float32)


def to_s16le(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        rate,
        rate * 2,
        2,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm


# ---------------------------------------------------------------- engines


class Transcriber:
    """Whisper base through faster-whisper; one transcription at a time (one engine thread)."""

    def __init__(self, model_dir: str, threads: int, beam_size: int, language: str | None):
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        t0 = time.monotonic()
        self.model = WhisperModel(
            model_dir,
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=1,
            local_files_only=True,
        )
        self.languages = frozenset(_LANGUAGE_CODES)
        self.beam_size = beam_size
        if language is not None and language not in self.languages:
            raise ValueError(f"unknown language {language!r}")
        self.default_language = language
        self.lock = threading.Lock()
        self.load_s = time.monotonic() - t0
        # Warm-up: the first decode allocates and is slower; pay it before "listening".
        t0 = time.monotonic()
        warm = (0.05 * np.sin(np.arange(WHISPER_RATE) * 2 * np.pi * 220 / WHISPER_RATE)).astype(np.float32)
        self.transcribe(warm, None, None, 0.0)
        self.warm_s = time.monotonic() - t0

    def transcribe(self, audio: np.ndarray, language: str | None, prompt: str | None, temperature: float):
        with self.lock:
            segments, info = self.model.transcribe(
                audio,
                language=language or self.default_language,
                initial_prompt=prompt,
                beam_size=self.beam_size,
                temperature=temperature,
                vad_filter=False,
                condition_on_previous_text=False,
            )
            return list(segments), info


class Speaker:
    """espeak-ng as a separate process per request (text on stdin), at most `limit` at once."""

    def __init__(self, binary: str, limit: int, timeout_s: float):
        self.binary = binary
        self.slots = threading.BoundedSemaphore(limit)
        self.timeout_s = timeout_s

    def synthesize(self, text: str, voice: str, wpm: int) -> Pcm:
        argv = [self.binary, "--stdin", "--stdout", "-v", voice, "-s", str(wpm)]
        with self.slots:
            try:
                proc = subprocess.run(
                    argv,
                    input=text.encode("utf-8"),
                    capture_output=True,
                    timeout=self.timeout_s,
                    check=False,
                )
            except FileNotFoundError as e:
                raise ApiError(500, f"espeak-ng is not installed ({self.binary})", "engine_unavailable") from e
            except subprocess.TimeoutExpired as e:
                raise ApiError(500, f"espeak-ng took longer than {self.timeout_s:.0f}s", "engine_timeout") from e
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()
            if "voice does not exist" in err or "voice" in err.lower() and "fail" in err.lower():
                raise ApiError(400, f"unknown voice {voice!r}", "invalid_voice", "voice")
            raise ApiError(500, f"espeak-ng failed (exit {proc.returncode}): {err[:200]}", "engine_failed")
        try:
            return parse_wav(proc.stdout)
        except ApiError as e:
            raise ApiError(500, f"espeak-ng produced no usable WAV: {e.message}", "engine_failed") from e


# ---------------------------------------------------------------- HTTP


@dataclass
class Config:
    max_body: int
    max_audio_s: float
    max_input_chars: int
    api_key: bytes | None
    transcriber: Transcriber | None
    speaker: Speaker | None
    started: float


def clean_text(s: str) -> str:
    """Drops control characters except newline and tab (espeak-ng reads text, not commands)."""
    return "".join(c for c in s if c in "\n\t" or (ord(c) >= 32 and ord(c) != 127))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "oc-speech/1"
    sys_version = ""
    cfg: Config  # set on the subclass that main() makes

    # -- plumbing

    def setup(self) -> None:
        super().setup()
        self._status = 0
        self._sent = 0
        self._note = ""
        self._body_read = False

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s " + format, self.client_address[0], *args)

    def log_error(self, format: str, *args: Any) -> None:
        LOG.info("%s " + format, self.client_address[0], *args)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard library's own errors (bad request line, unsupported method, long URI)
        # in OpenAI's JSON shape too.
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # An unparsable request line leaves the default HTTP/0.9, under which the standard
            # library writes no status line or headers; this server never speaks 0.9.
            self.request_version = "HTTP/1.0"
        msg = message or self.responses.get(code, ("error",))[0]
        LOG.info("%s rejected: %d %s", self.client_address[0], code, msg)
        try:
            self.reply_error(ApiError(code, msg, "http_error"))
        except OSError:
            pass

    def reply(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._sent = len(body)

    def reply_json(self, status: int, obj: Any) -> None:
        self.reply(status, json.dumps(obj).encode(), "application/json")

    def reply_error(self, err: ApiError) -> None:
        extra = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        if err.status == 405:
            extra = {"Allow": ", ".join(ROUTES.get(self.path_only(), {}).keys()) or "GET"}
        self._note = err.code or ""
        self.reply(err.status, err.body(), "application/json", extra)

    def path_only(self) -> str:
        return getattr(self, "path", "").split("?", 1)[0]

    def read_body(self) -> bytes:
        self._body_read = True
        cap = self.cfg.max_body
        te = self.headers.get("Transfer-Encoding", "").lower()
        if te:
            if te != "chunked":
                self.close_connection = True
                raise ApiError(400, f"unsupported Transfer-Encoding {te!r}", "invalid_request")
            return self.read_chunked(cap)
        length_s = self.headers.get("Content-Length")
        if length_s is None:
            self.close_connection = True
            raise ApiError(411, "Content-Length is required", "length_required")
        if not length_s.strip().isdigit():
            self.close_connection = True
            raise ApiError(400, "Content-Length is not a number", "invalid_request")
        length = int(length_s)
        if length > cap:
            self.close_connection = True
            raise ApiError(413, f"request body of {length} bytes is over the {cap}-byte limit", "body_too_large")
        data = self.rfile.read(length)
        if len(data) != length:
            self.close_connection = True
            raise ApiError(400, "request body ended early", "invalid_request")
        return data

    def read_chunked(self, cap: int) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(1024)
            size_s = line.split(b";", 1)[0].strip()
            try:
                size = int(size_s, 16)
            except ValueError:
                self.close_connection = True
                raise ApiError(400, "malformed chunked body", "invalid_request") from None
            if size < 0:
                self.close_connection = True
                raise ApiError(400, "malformed chunked body", "invalid_request")
            if size == 0:
                # Trailers until an empty line.
                for _ in range(64):
                    if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                        break
                return bytes(out)
            if len(out) + size > cap:
                self.close_connection = True
                raise ApiError(413, f"request body is over the {cap}-byte limit", "body_too_large")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.read(2) != b"\r\n":
                self.close_connection = True
                raise ApiError(400, "chunked body ended early", "invalid_request")
            out += chunk

    def has_body(self) -> bool:
        if self.headers.get("Transfer-Encoding"):
            return True
        return self.headers.get("Content-Length", "0").strip() not in ("", "0")

    def check_auth(self) -> None:
        key = self.cfg.api_key
        if key is None:
            return
        got = self.headers.get("Authorization", "")
        scheme, _, token = got.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8", "replace"), key)
        if not ok:
            raise ApiError(401, "missing or incorrect API key (Authorization: Bearer ...)", "invalid_api_key")

    def dispatch(self) -> None:
        t0 = time.monotonic()
        path = self.path_only()
        try:
            methods = ROUTES.get(path)
            if methods is None:
                raise ApiError(404, f"no route {path}", "not_found")
            handler = methods.get(self.command)
            if handler is None:
                raise ApiError(405, f"method {self.command} is not allowed on {path}", "method_not_allowed")
            if path.startswith("/v1/"):
                self.check_auth()
            handler(self)
        except ApiError as e:
            if not self._body_read and self.has_body():
                # The body was not read: the connection cannot carry another request.
                self.close_connection = True
            self.reply_error(e)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
            self.close_connection = True
            self._note = f"connection: {type(e).__name__}"
        except Exception as e:
            LOG.exception("internal error on %s %s", self.command, path)
            self.close_connection = True
            try:
                self.reply_error(ApiError(500, f"internal error: {type(e).__name__}", "internal_error"))
            except OSError:
                pass
        LOG.info(
            "%s %s %s %dB %.0fms%s",
            self.command,
            path,
            self._status,
            self._sent,
            (time.monotonic() - t0) * 1000,
            f" {self._note}" if self._note else "",
        )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = dispatch

    # -- endpoints

    def health(self) -> None:
        cfg = self.cfg
        self.reply_json(
            200,
            {
                "status": "ok",
                "stt": cfg.transcriber is not None,
                "tts": cfg.speaker is not None,
                "uptime_s": round(time.monotonic() - cfg.started, 3),
            },
        )

    def models(self) -> None:
        data = []
        if self.cfg.transcriber is not None:
            data.append({"id": "whisper-base", "object": "model", "created": 0, "owned_by": "oracle-calls"})
        if self.cfg.speaker is not None:
            data.append({"id": "espeak-ng", "object": "model", "created": 0, "owned_by": "oracle-calls"})
        self.reply_json(200, {"object": "list", "data": data})

    def transcriptions(self) -> None:
        tr = self.cfg.transcriber
        if tr is None:
            raise ApiError(404, "this sidecar serves no transcriptions (started with --tts-only)", "not_found")
        body = self.read_body()
        parts = parse_multipart(body, self.headers.get("Content-Type", ""))
        fields: dict[str, str] = {}
        audio: bytes | None = None
        for p in parts:
            if p.name == "file":
                if audio is not None:
                    raise ApiError(400, "more than one file part", "invalid_multipart", "file")
                audio = p.data
            elif len(p.data) > MAX_FIELD_BYTES:
                raise ApiError(400, f"form field {p.name!r} is too long", "invalid_value", p.name)
            else:
                try:
                    fields[p.name] = p.data.decode("utf-8")
                except UnicodeDecodeError:
                    raise ApiError(400, f"form field {p.name!r} is not UTF-8", "invalid_value", p.name) from None
        if audio is None:
            raise ApiError(400, "the file part is missing", "missing_file", "file")
        if not fields.get("model", "").strip():
            raise ApiError(400, "you must provide a model parameter", "missing_model", "model")
        fmt = fields.get("response_format", "json") or "json"
        if fmt not in TRANSCRIPTION_FORMATS:
            raise ApiError(
                400,
                f"response_format {fmt!r} is not supported (one of {', '.join(TRANSCRIPTION_FORMATS)})",
                "invalid_response_format",
                "response_format",
            )
        language = fields.get("language") or None
        if language is not None and language not in tr.languages:
            raise ApiError(400, f"unknown language {language!r} (ISO-639-1, e.g. en)", "invalid_language", "language")
        prompt = fields.get("prompt") or None
        try:
            temperature = float(fields.get("temperature", "0") or "0")
        except ValueError:
            raise ApiError(400, "temperature is not a number", "invalid_value", "temperature") from None
        if not 0.0 <= temperature <= 1.0:
            raise ApiError(400, "temperature must be between 0 and 1", "invalid_value", "temperature")
        pcm = parse_wav(audio)
        if pcm.seconds > self.cfg.max_audio_s:
            raise ApiError(
                400,
                f"audio is {pcm.seconds:.1f}s long; the limit is {self.cfg.max_audio_s:.0f}s",
                "audio_too_long",
                "file",
            )
        if len(pcm.samples) == 0:
            raise ApiError(400, "the audio is empty", "audio_empty", "file")
        x = resample(pcm.samples, pcm.rate, WHISPER_RATE)
        t0 = time.monotonic()
        try:
            segments, info = tr.transcribe(x, language, prompt, temperature)
        except Exception as e:
            LOG.exception("transcription failed")
            raise ApiError(500, f"transcription failed: {type(e).__name__}: {e}", "engine_failed") from e
        took = time.monotonic() - t0
        self._note = f"audio={pcm.seconds:.2f}s stt={took * 1000:.0f}ms rtf={took / max(pcm.seconds, 1e-9):.3f}"
        text = "".join(s.text for s in segments).strip()
        if fmt == "text":
            self.reply(200, (text + "\n").encode(), "text/plain; charset=utf-8")
        elif fmt == "json":
            self.reply_json(200, {"text": text})
        else:
            self.reply_json(
                200,
                {
                    "task": "transcribe",
                    "language": info.language,
                    "duration": round(pcm.seconds, 3),
                    "text": text,
                    "segments": [
                        {
                            "id": i,
                            "seek": s.seek,
                            "start": round(s.start, 3),
                            "end": round(s.end, 3),
                            "text": s.text,
                            "tokens": list(s.tokens),
                            "temperature": s.temperature,
                            "avg_logprob": s.avg_logprob,
                            "compression_ratio": s.compression_ratio,
                            "no_speech_prob": s.no_speech_prob,
                        }
                        for i, s in enumerate(segments)
                    ],
                },
            )

    def speech(self) -> None:
        sp = self.cfg.speaker
        if sp is None:
            raise ApiError(404, "this sidecar serves no speech (started with --stt-only)", "not_found")
        body = self.read_body()
        ctype, _ = header_params(self.headers.get("Content-Type", ""))
        if ctype != "application/json":
            raise ApiError(400, "Content-Type must be application/json", "invalid_content_type")
        try:
            req = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}", "invalid_json") from None
        except RecursionError:
            raise ApiError(400, "request body is nested too deeply", "invalid_json") from None
        if not isinstance(req, dict):
            raise ApiError(400, "request body must be a JSON object", "invalid_json")
        model = req.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ApiError(400, "you must provide a model parameter", "missing_model", "model")
        text = req.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "input must be a non-empty string", "invalid_input", "input")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "input is not valid Unicode (a lone surrogate)", "invalid_input", "input") from None
        if len(text) > self.cfg.max_input_chars:
            raise ApiError(
                400,
                f"input is {len(text)} characters; the limit is {self.cfg.max_input_chars}",
                "input_too_long",
                "input",
            )
        voice = req.get("voice", "en-us")
        if not isinstance(voice, str) or not VOICE_RE.match(voice):
            raise ApiError(400, "voice must match [A-Za-z0-9_][A-Za-z0-9+_-]{0,63}", "invalid_voice", "voice")
        voice = OPENAI_VOICES.get(voice, voice)
        fmt = req.get("response_format", "wav")
        if fmt not in SPEECH_FORMATS:
            raise ApiError(
                400,
                f"response_format {fmt!r} is not supported (one of {', '.join(SPEECH_FORMATS)})",
                "invalid_response_format",
                "response_format",
            )
        speed = req.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            raise ApiError(400, "speed must be a number from 0.25 to 4.0", "invalid_value", "speed")
        wpm = min(ESPEAK_MAX_WPM, max(ESPEAK_MIN_WPM, round(ESPEAK_WPM * speed)))
        t0 = time.monotonic()
        pcm = sp.synthesize(clean_text(text), voice, wpm)
        out = to_s16le(resample(pcm.samples, pcm.rate, SPEECH_RATE))
        took = time.monotonic() - t0
        self._note = f"chars={len(text)} audio={len(out) / 2 / SPEECH_RATE:.2f}s tts={took * 1000:.0f}ms"
        if fmt == "pcm":
            self.reply(200, out, "audio/pcm", {"X-Sample-Rate": str(SPEECH_RATE)})
        else:
            self.reply(200, wav_bytes(out, SPEECH_RATE), "audio/wav")


ROUTES: dict[str, dict[str, Any]] = {
    "/health": {"GET": Handler.health, "HEAD": Handler.health},
    "/v1/models": {"GET": Handler.models},
    "/v1/audio/transcriptions": {"POST": Handler.transcriptions},
    "/v1/audio/speech": {"POST": Handler.speech},
}


def read_api_key(path: str | None) -> bytes | None:
    if path:
        try:
            with open(path, "rb") as f:
                key = f.read().strip()
        except OSError as e:
            raise SystemExit(f"oc_speech_server: cannot read --api-key-file: {e.strerror}") from None
        if not key:
            raise SystemExit(f"oc_speech_server: {path} is empty")
        return key
    env = os.environ.get("OC_SPEECH_API_KEY", "").strip()
    return env.encode() if env else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed when ready)")
    ap.add_argument(
        "--model-dir",
        default=os.environ.get("OC_WHISPER_MODEL_DIR"),
        help="Whisper CTranslate2 model directory (default $OC_WHISPER_MODEL_DIR)",
    )
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 threads (default 1)")
    ap.add_argument("--beam-size", type=int, default=1, help="Whisper beam size (default 1: greedy)")
    ap.add_argument(
        "--language", default=None, help="language when a request names none (default: detect; 'en' saves ~a third)"
    )
    ap.add_argument("--espeak", default="espeak-ng", help="the espeak-ng program")
    ap.add_argument("--tts-processes", type=int, default=2, help="espeak-ng processes at once (default 2)")
    ap.add_argument("--tts-timeout", type=float, default=30.0, help="seconds per espeak-ng run")
    ap.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    ap.add_argument("--max-audio-seconds", type=float, default=120.0)
    ap.add_argument("--max-input-chars", type=int, default=4096)
    ap.add_argument("--socket-timeout", type=float, default=30.0, help="idle seconds per connection")
    ap.add_argument("--api-key-file", help="require this bearer token (else $OC_SPEECH_API_KEY, if set)")
    ap.add_argument("--stt-only", action="store_true")
    ap.add_argument("--tts-only", action="store_true")
    ap.add_argument("--log-level", default=os.environ.get("OC_SPEECH_LOG", "INFO"))
    args = ap.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s oc-speech %(levelname)s %(message)s",
    )
    # faster-whisper logs each clip's duration and detected language at INFO; one line per
    # request from this server is enough.
    logging.getLogger("faster_whisper").setLevel(max(logging.WARNING, LOG.getEffectiveLevel()))
    if args.stt_only and args.tts_only:
        ap.error("--stt-only and --tts-only exclude each other")
    for name in ("threads", "beam_size", "tts_processes"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")

    api_key = read_api_key(args.api_key_file)
    transcriber = None
    if not args.tts_only:
        if not args.model_dir or not os.path.isfile(os.path.join(args.model_dir, "model.bin")):
            ap.error("--model-dir (or $OC_WHISPER_MODEL_DIR) must name a directory with model.bin")
        try:
            transcriber = Transcriber(args.model_dir, args.threads, args.beam_size, args.language)
        except ValueError as e:
            ap.error(str(e))
        LOG.info(
            "whisper model loaded in %.2fs, warmed in %.2fs (threads=%d beam=%d)",
            transcriber.load_s,
            transcriber.warm_s,
            args.threads,
            args.beam_size,
        )
    speaker = None
    if not args.stt_only:
        speaker = Speaker(args.espeak, args.tts_processes, args.tts_timeout)
        t0 = time.monotonic()
        speaker.synthesize("ready", "en-us", ESPEAK_WPM)
        LOG.info("espeak-ng answered in %.3fs", time.monotonic() - t0)

    cfg = Config(
        max_body=args.max_body_bytes,
        max_audio_s=args.max_audio_seconds,
        max_input_chars=args.max_input_chars,
        api_key=api_key,
        transcriber=transcriber,
        speaker=speaker,
        started=time.monotonic(),
    )
    handler = type("BoundHandler", (Handler,), {"cfg": cfg, "timeout": args.socket_timeout})
    server = http.server.ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True

    def stop(signum: int, _frame: Any) -> None:
        LOG.info("signal %d: shutting down", signum)
        # shutdown() waits for serve_forever() to return, which runs on this (main) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"listening on http://{shown}:{port}", flush=True)
    LOG.info("listening on http://%s:%d (auth %s)", shown, port, "on" if api_key else "off")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
