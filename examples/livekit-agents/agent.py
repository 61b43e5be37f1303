"""An oracle-calls voice agent written with LiveKit Agents (an integrator's Python agent).

It registers with LiveKit under the oracle's agent name, and for every call it is dispatched to:
fetches the call's wrapped key from the oracle's server with the agent API key
(docs/PROTOCOL.md §6.3), opens the HPKE envelope with the oracle's private key (§3, §4), puts the
call key into the room's shared E2EE key (§5.1) and runs a LiveKit `AgentSession` — Silero VAD,
and speech-to-text, the language model and text-to-speech behind OpenAI-compatible servers.

Settings (environment; secrets from a variable or a `_FILE`, never on the command line):
  LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET[_FILE]   the LiveKit server
  OC_AGENT_NAME                the oracle's agent name (its /.well-known/oracle-calls `agentName`)
  OC_SERVER_URL                the oracle's server, e.g. http://127.0.0.1:8080
  OC_AGENT_API_KEY[_FILE]      the agent API key (ocak_…)
  OC_ORACLE_KEY_FILE           the oracle's hpke-p256 private key (PKCS#8 PEM)
  OC_STT_URL, OC_LLM_URL, OC_TTS_URL   OpenAI-compatible base URLs (…/v1)
  OC_STT_MODEL [whisper-base], OC_LLM_MODEL [smollm2], OC_TTS_MODEL [espeak-ng], OC_TTS_VOICE [en-us]
  OPENAI_API_KEY[_FILE]        the engines' key, if they want one
  OC_MAX_CALLS [16]            calls at once (the worker's reported load is calls / this)

Run: python agent.py start   (LiveKit Agents' own command line; `start` = production mode)

Only the hpke-p256 scheme (the default oracle key) and v1 envelopes are handled: deploy without
prekeys (v2 envelopes need the prekey store of the Rust agent's key holder, §13.5).
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import struct
import urllib.parse

import aiohttp
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from livekit import rtc
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, room_io
from livekit.plugins import openai, silero

log = logging.getLogger("oc-livekit-agent")

# §1: callId = <Matrix event id>@<room name>.
CALL_ID = re.compile(r"\$[A-Za-z0-9+/=_\-.:]{1,254}@oc-[0-9a-f]{32}")


def secret(name: str, default: str | None = None) -> str:
    """`NAME` from the environment, or the contents of the file `NAME_FILE` names."""
    path = os.environ.get(name + "_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"{name} or {name}_FILE must be set")
    return value


def setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise SystemExit(f"{name} must be set")
    return value


def call_context(key: dict) -> bytes:
    """§3: the context every envelope is bound to."""
    out = b"oracle-calls/call-key/v1"
    for field in ("sessionId", "roomId", "userDid", "oracleDid", "callType"):
        value = key[field].encode("utf-8")
        out += struct.pack(">I", len(value)) + value
    return out


def open_envelope(envelope: str, context: bytes, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """§4: a `v1.hpke-p256.` envelope → the 32-byte call key. Raises ValueError on anything else."""
    version, _, rest = envelope.partition(".")
    scheme, _, text = rest.partition(".")
    if version != "v1" or scheme != "hpke-p256":
        raise ValueError(f"unsupported envelope {version}.{scheme} (v2 needs the prekey holder)")
    body = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(body) != 32 + 65 + 48:
        raise ValueError("envelope body has the wrong length")
    header, payload = body[:32], body[32:]
    spki = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not hmac.compare_digest(header[:16], hashlib.sha256(spki).digest()[:16]):
        raise ValueError("sealed to another key")
    if not hmac.compare_digest(header[16:32], hashlib.sha256(context).digest()[:16]):
        raise ValueError("sealed for another call")
    suite = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    # The public single-shot API takes no aad; the binding it wraps does.
    call_key = rust_openssl.hpke._decrypt_with_aad(
        suite, payload, private_key, info=context, aad=header
    )
    if len(call_key) != 32:
        raise ValueError("the call key is not 32 bytes")
    return call_key


def e2ee_options(call_key: bytes, key_derivation: str) -> rtc.E2EEOptions:
    """§5.1: shared-key mode, the call key in slot 0; hkdf takes the raw bytes, pbkdf2 the hex."""
    if key_derivation == "hkdf":
        material, kdf = call_key, rtc.KeyDerivationFunction.HKDF
    else:
        material, kdf = call_key.hex().encode("ascii"), rtc.KeyDerivationFunction.PBKDF2
    return rtc.E2EEOptions(
        key_provider_options=rtc.KeyProviderOptions(
            shared_key=material, key_derivation_function=kdf
        )
    )


async def fetch_key(call_id: str) -> dict:
    """§6.3: the call's envelope, still wrapped, and the context's fields."""
    url = "{}/calls/{}/key".format(
        setting("OC_SERVER_URL").rstrip("/"), urllib.parse.quote(call_id, safe="-._~")
    )
    headers = {"Authorization": "Bearer " + secret("OC_AGENT_API_KEY")}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                raise RuntimeError(f"key endpoint answered {r.status}")
            return json.loads(await r.text())


# LiveKit's default load is the whole machine's CPU use: on a busy shared host the worker marks
# itself full (load > 0.7) and is never dispatched to. Here the load is calls / OC_MAX_CALLS.
MAX_CALLS = int(os.environ.get("OC_MAX_CALLS", "16"))
server = AgentServer(
    load_fnc=lambda s: len(s.active_jobs) / MAX_CALLS,
    port=0,  # the worker's health HTTP server: any free port (several agents per host)
)


@server.rtc_session(agent_name=setting("OC_AGENT_NAME"))
async def entrypoint(ctx: JobContext) -> None:
    call_id = ctx.job.metadata
    if not CALL_ID.fullmatch(call_id) or call_id.rsplit("@", 1)[1] != ctx.job.room.name:
        raise RuntimeError("the dispatch metadata is not this room's call id")
    key = await fetch_key(call_id)
    if key["roomId"] != ctx.job.room.name:
        raise RuntimeError("the key is for another room")
    with open(setting("OC_ORACLE_KEY_FILE"), "rb") as f:
        private_key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise RuntimeError("OC_ORACLE_KEY_FILE is not an hpke-p256 key")
    call_key = open_envelope(key["encryptionKey"], call_context(key), private_key)
    await ctx.connect(encryption=e2ee_options(call_key, key["keyDerivation"]))

    engines_key = secret("OPENAI_API_KEY", "none")
    session = AgentSession(
        vad=silero.VAD.load(),
        stt=openai.STT(
            base_url=setting("OC_STT_URL"),
            api_key=engines_key,
            model=os.environ.get("OC_STT_MODEL", "whisper-base"),
            language="en",
            use_realtime=False,
        ),
        llm=openai.LLM(
            base_url=setting("OC_LLM_URL"),
            api_key=engines_key,
            model=os.environ.get("OC_LLM_MODEL", "smollm2"),
            temperature=0.0,
            max_completion_tokens=40,
        ),
        tts=openai.TTS(
            base_url=setting("OC_TTS_URL"),
            api_key=engines_key,
            model=os.environ.get("OC_TTS_MODEL", "espeak-ng"),
            voice=os.environ.get("OC_TTS_VOICE", "en-us"),
            response_format="pcm",
        ),
        # No turn-detector model (it would be fetched from a model hub): end of turn by VAD.
        turn_handling={"turn_detection": "vad"},
    )
    await session.start(
        agent=Agent(instructions="You are a helpful oracle. Answer in one short sentence."),
        room=ctx.room,
        # Only the caller is heard (§7: the identity that sent the call event).
        room_options=room_io.RoomOptions(participant_identity=key["userIdentity"]),
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "LIVEKIT_API_SECRET" not in os.environ:
        os.environ["LIVEKIT_API_SECRET"] = secret("LIVEKIT_API_SECRET")
    cli.run_app(server)
