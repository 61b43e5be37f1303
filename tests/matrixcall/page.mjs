// In-page half of the MatrixCall party (see party.mjs): matrix-js-sdk's legacy 1:1 `MatrixCall`
// with its Rust crypto, as an Element-like client would run it. Bundled by build.mjs into
// dist/page.js. party.mjs calls window.runParty(cfg); every observation goes out through
// window.partyEmit(obj) (exposed by party.mjs) as it happens, and runParty resolves with a
// summary once the last call has ended.

import { initAsync } from '@matrix-org/matrix-sdk-crypto-wasm';
import * as sdk from 'matrix-js-sdk';

const log = (msg) => console.log(`[page] ${msg}`);
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

/** A promise that rejects after `ms` with `what` in the message. */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${Math.round(ms)} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` every 50 ms until it returns a truthy value or `ms` pass. */
async function until(check, ms, what) {
  const end = now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (now() > end) throw new Error(`timed out after ${Math.round(ms)} ms: ${what}`);
    await sleep(50);
  }
}

// --- tone analysis -------------------------------------------------------------------------

/** Goertzel power of `freq` in `x`, normalized to [0, 1]: 1 for a pure sine at `freq`. */
function goertzel(x, freq, rate) {
  if (x.length === 0) return 0;
  const coeff = 2 * Math.cos((2 * Math.PI * freq) / rate);
  let s1 = 0;
  let s2 = 0;
  let energy = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    energy += v * v;
    const s0 = v + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  if (energy === 0) return 0;
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return Math.max(0, Math.min(1, (2 * power) / (x.length * energy)));
}

/** The strongest frequency in `x` between 100 and 4000 Hz, on a 5 Hz grid (Goertzel scan). */
function dominantHz(x, rate) {
  let best = 0;
  let bestHz = 0;
  for (let f = 100; f <= 4000; f += 5) {
    const p = goertzel(x, f, rate);
    if (p > best) {
      best = p;
      bestHz = f;
    }
  }
  return bestHz;
}

function rms(x) {
  let e = 0;
  for (let i = 0; i < x.length; i++) e += x[i] * x[i];
  return x.length ? Math.sqrt(e / x.length) : 0;
}

/**
 * Listens to a remote CallFeed through WebAudio: keeps the last `keepSeconds` of samples and
 * reports the first 20 ms block whose RMS is above -40 dBFS (`onFirstEnergy(msSinceEpoch)`).
 */
async function listen(ctx, stream, keepSeconds, onFirstEnergy) {
  // Chrome hands remote WebRTC audio to WebAudio only while the stream also plays in a media
  // element; a muted one is enough.
  const el = document.createElement('audio');
  el.muted = true;
  el.autoplay = true;
  el.srcObject = stream;
  document.body.appendChild(el);
  const node = new AudioWorkletNode(ctx, 'meter', { processorOptions: { chunk: 960 } });
  const src = new MediaStreamAudioSourceNode(ctx, { mediaStream: stream });
  src.connect(node);
  const cap = Math.round(keepSeconds * ctx.sampleRate);
  const chunks = [];
  let held = 0;
  let total = 0;
  let first = null;
  node.port.onmessage = (ev) => {
    const s = ev.data;
    total += s.length;
    if (first === null && rms(s) > 0.01) {
      first = Date.now();
      onFirstEnergy(first);
    }
    chunks.push(s);
    held += s.length;
    while (held - chunks[0].length >= cap) held -= chunks.shift().length;
  };
  return {
    /** Stops listening; returns the kept samples (newest last) and how many arrived in all. */
    stop() {
      node.port.onmessage = null;
      src.disconnect();
      node.disconnect();
      el.srcObject = null;
      el.remove();
      const out = new Float32Array(held);
      let o = 0;
      for (const c of chunks) {
        out.set(c, o);
        o += c.length;
      }
      return { samples: out, total };
    },
  };
}

// --- WebRTC statistics ----------------------------------------------------------------------

/** The evidence from RTCPeerConnection.getStats() that the tests assert on. */
async function statsOf(pc) {
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  const out = { transport: null, pair: null, inbound_audio: null, outbound_audio: null, codec: null };
  for (const s of byId.values()) {
    if (s.type === 'transport' && (out.transport === null || s.selectedCandidatePairId)) {
      out.transport = {
        dtls_state: s.dtlsState ?? null,
        srtp_cipher: s.srtpCipher ?? null,
        dtls_cipher: s.dtlsCipher ?? null,
        tls_version: s.tlsVersion ?? null,
        dtls_role: s.dtlsRole ?? null,
        ice_state: s.iceState ?? null,
        selected_pair_id: s.selectedCandidatePairId ?? null,
      };
    } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.inbound_audio = {
        packets: s.packetsReceived ?? 0,
        bytes: s.bytesReceived ?? 0,
        lost: s.packetsLost ?? 0,
        jitter: s.jitter ?? null,
      };
      const codec = s.codecId ? byId.get(s.codecId) : null;
      if (codec) out.codec = { mime_type: codec.mimeType, clock_rate: codec.clockRate };
    } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      out.outbound_audio = { packets: s.packetsSent ?? 0, bytes: s.bytesSent ?? 0 };
    }
  }
  const pairId = out.transport?.selected_pair_id;
  const pair = pairId ? byId.get(pairId) : null;
  if (pair) {
    const cand = (id) => {
      const c = byId.get(id);
      return c
        ? {
            type: c.candidateType,
            protocol: c.protocol,
            address: c.address ?? c.ip ?? null,
            port: c.port ?? null,
            relay_protocol: c.relayProtocol ?? null,
          }
        : null;
    };
    out.pair = {
      state: pair.state,
      local: cand(pair.localCandidateId),
      remote: cand(pair.remoteCandidateId),
      rtt_s: pair.currentRoundTripTime ?? null,
    };
  }
  return out;
}

// --- one call -------------------------------------------------------------------------------

/**
 * Follows one MatrixCall from `t0` (place on the caller, Call.incoming on the callee) until it
 * ends; hangs up itself after `hangupAfter` seconds of `connected` when that is set.
 */
function follow(call, { role, t0, cfg, ctx, emit }) {
  const ms = () => Math.round(now() - t0);
  const res = {
    role,
    call_id: call.callId,
    room_id: call.roomId,
    party_id: call.ourPartyId,
    states: [],
    connected_ms: null,
    first_audio_ms: null,
    first_audio_at: null,
    remote_feed: false,
    remote_feed_ms: null,
    remote_stream_id: null,
    local_stream_id: null,
    hangup_reason: null,
    hangup_party: null,
    errors: [],
    stats: null,
    tone: null,
  };
  let listener = null;
  let statsTimer = null;
  let hangupTimer = null;

  let over = false; // set when the call ends: a snapshot that completes later shows it closed
  const pollStats = async () => {
    if (!call.peerConn || over) return;
    try {
      const s = await statsOf(call.peerConn);
      // The other side's hangup closes DTLS (its close_notify) before its m.call.hangup is
      // decrypted here: a snapshot in between shows the transport closed. Keep the last one
      // taken while it was connected.
      const live = s?.transport?.dtls_state === 'connected';
      if (!over && (live || res.stats === null)) res.stats = s;
    } catch (e) {
      log(`getStats failed: ${e.message}`);
    }
  };

  const onFeeds = () => {
    const feed = call.remoteUsermediaFeed;
    res.local_stream_id ??= call.localUsermediaStream?.id ?? null;
    if (!feed || res.remote_feed) return;
    res.remote_feed = true;
    res.remote_feed_ms = ms();
    res.remote_stream_id = feed.stream.id;
    emit({ event: 'remote_feed', call_id: call.callId, stream_id: feed.stream.id,
      audio_tracks: feed.stream.getAudioTracks().length, t_ms: res.remote_feed_ms });
    listen(ctx, feed.stream, cfg.keep_seconds, (at) => {
      res.first_audio_ms = Math.round(now() - t0);
      res.first_audio_at = at;
      emit({ event: 'first_audio', call_id: call.callId, t_ms: res.first_audio_ms, at });
    }).then(
      (l) => {
        listener = l;
      },
      (e) => res.errors.push(`listen: ${e.message}`),
    );
  };

  const ended = new Promise((resolve) => {
    call.on(sdk.CallEvent.State, (state) => {
      const t = ms();
      if (state === 'ended') over = true;
      res.states.push({ state, t_ms: t });
      emit({ event: 'state', call_id: call.callId, state, t_ms: t, at: Date.now() });
      if (state === 'connected' && res.connected_ms === null) {
        res.connected_ms = t;
        statsTimer = setInterval(pollStats, 1000);
        pollStats();
        if (cfg.hangup_after > 0) {
          hangupTimer = setTimeout(async () => {
            await pollStats();
            emit({ event: 'hanging_up', call_id: call.callId, t_ms: ms() });
            call.hangup('user_hangup', false);
          }, cfg.hangup_after * 1000);
        }
      }
    });
    call.on(sdk.CallEvent.FeedsChanged, onFeeds);
    call.on(sdk.CallEvent.Error, (err) => {
      const e = { code: err?.code ?? null, message: String(err?.message ?? err) };
      res.errors.push(`${e.code}: ${e.message}`);
      emit({ event: 'error', call_id: call.callId, ...e, t_ms: ms() });
    });
    call.on(sdk.CallEvent.Hangup, () => {
      over = true;
      resolve();
    });
    if (call.state === 'ended') resolve();
  });

  return (async () => {
    onFeeds();
    await ended;
    clearInterval(statsTimer);
    clearTimeout(hangupTimer);
    res.local_stream_id ??= call.localUsermediaStream?.id ?? null;
    res.hangup_reason = call.hangupReason ?? null;
    res.hangup_party = call.hangupParty ?? null;
    emit({ event: 'hangup', call_id: call.callId, reason: res.hangup_reason,
      party: res.hangup_party, t_ms: ms() });
    if (listener) {
      const { samples, total } = listener.stop();
      // Skip the first 0.5 s the listener kept (jitter-buffer start-up), when there is more.
      const skip = samples.length > ctx.sampleRate ? Math.round(ctx.sampleRate / 2) : 0;
      const tail = samples.subarray(skip);
      res.tone = {
        expected_hz: cfg.expect_hz,
        power: goertzel(tail, cfg.expect_hz, ctx.sampleRate),
        dominant_hz: dominantHz(tail.subarray(Math.max(0, tail.length - ctx.sampleRate)), ctx.sampleRate),
        rms: rms(tail),
        seconds_heard: total / ctx.sampleRate,
      };
    }
    return res;
  })();
}

// --- the party ------------------------------------------------------------------------------

window.runParty = async (cfg) => {
  const emit = (obj) => window.partyEmit(obj);
  await initAsync(new URL('/matrix_sdk_crypto_wasm_bg.wasm', location.href));

  const ctx = new AudioContext({ sampleRate: 48000 });
  await within(ctx.resume(), 5000, 'AudioContext.resume');
  await ctx.audioWorklet.addModule('/meter.js');

  const client = sdk.createClient({
    baseUrl: cfg.homeserver,
    userId: cfg.user_id,
    deviceId: cfg.device_id,
    accessToken: cfg.access_token,
    forceTURN: cfg.force_turn,
    fallbackICEServerAllowed: false,
  });
  await client.initRustCrypto({ useIndexedDB: false });

  // Signaling evidence: every call event this client sees in a room timeline, with the type it
  // had on the wire (m.room.encrypted when it came through Megolm).
  const callEvents = [];
  client.on(sdk.RoomEvent.Timeline, (ev, room) => {
    const record = () => {
      const type = ev.getType();
      if (!type.startsWith('m.call.')) return;
      const c = ev.getContent();
      callEvents.push({
        type,
        wire_type: ev.getWireType(),
        encrypted: ev.isEncrypted(),
        sender: ev.getSender(),
        // Our own events are seen as local echoes, before encryption.
        own: ev.getSender() === client.getUserId(),
        call_id: c.call_id ?? null,
        room_id: room?.roomId ?? ev.getRoomId(),
        event_id: ev.getId(),
      });
    };
    if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption()) {
      ev.once(sdk.MatrixEventEvent.Decrypted, record);
    } else {
      record();
    }
  });

  const incoming = [];
  let wake = null;
  // CallEventHandlerEvent.Incoming (not exported by the package's index).
  client.on('Call.incoming', (call) => {
    emit({ event: 'incoming', call_id: call.callId, room_id: call.roomId,
      from: call.getOpponentMember?.()?.userId ?? null, at: Date.now() });
    incoming.push({ call, t0: now() });
    wake?.();
  });

  // The callee joins every room it is invited to (the caller's DM).
  const joining = new Set();
  const joinInvites = () => {
    if (cfg.mode !== 'answer') return;
    for (const room of client.getRooms()) {
      if (room.getMyMembership() === 'invite' && !joining.has(room.roomId)) {
        joining.add(room.roomId);
        client.joinRoom(room.roomId).then(
          () => emit({ event: 'joined', room_id: room.roomId }),
          (e) => emit({ event: 'error', code: 'join_failed', message: e.message }),
        );
      }
    }
  };
  // A room we are invited to is in the store once its sync response has been processed.
  client.on(sdk.ClientEvent.Room, () => setTimeout(joinInvites, 0));

  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
      joinInvites();
      if (state === 'PREPARED') resolve();
      if (state === 'ERROR') reject(new Error(`sync failed: ${data?.error?.message}`));
    });
  });
  await client.startClient({ initialSyncLimit: 10 });
  await within(prepared, 30000, 'the first sync');
  joinInvites();
  if (cfg.force_turn) {
    await until(async () => client.getTurnServers().length > 0 || (await client.checkTurnServers(), client.getTurnServers().length > 0),
      10000, 'TURN servers from /voip/turnServer');
  }
  emit({ event: 'ready', user_id: client.getUserId(), device_id: client.getDeviceId(),
    turn_uris: client.getTurnServers().flatMap((s) => s.urls ?? []) });

  if (cfg.idle_seconds > 0) {
    emit({ event: 'idle', phase: 'start', seconds: cfg.idle_seconds });
    await sleep(cfg.idle_seconds * 1000);
    emit({ event: 'idle', phase: 'end' });
  }

  const results = [];
  try {
    if (cfg.mode === 'call') {
      const roomId = cfg.room_id ?? (await directRoom(client, cfg.invitee, emit));
      emit({ event: 'room', room_id: roomId });
      const room = client.getRoom(roomId);
      await until(() => room?.getMember(cfg.invitee)?.membership === 'join', cfg.join_timeout_ms,
        `${cfg.invitee} to join ${roomId}`);
      for (let i = 0; i < cfg.calls; i++) {
        if (i > 0) await sleep(cfg.gap_seconds * 1000);
        const call = sdk.createNewMatrixCall(client, roomId, { invitee: cfg.invitee });
        if (!call) throw new Error('createNewMatrixCall returned nothing: no WebRTC support?');
        const t0 = now();
        emit({ event: 'placing', call_id: call.callId, index: i, at: Date.now() });
        const done = follow(call, { role: 'caller', t0, cfg, ctx, emit });
        await call.placeVoiceCall();
        results.push(await done);
        emit({ event: 'call_result', index: i, ...results.at(-1), call_events: eventsOf(callEvents, call.callId) });
      }
    } else {
      for (let i = 0; i < cfg.calls; i++) {
        while (incoming.length === 0) {
          await new Promise((r) => {
            wake = r;
          });
        }
        const { call, t0 } = incoming.shift();
        const done = follow(call, { role: 'callee', t0, cfg, ctx, emit });
        if (cfg.reject) {
          call.reject();
        } else {
          await call.answer(true, false);
        }
        results.push(await done);
        // The caller's hangup may be decrypted after our own state change: give it a moment.
        await sleep(300);
        emit({ event: 'call_result', index: i, ...results.at(-1), call_events: eventsOf(callEvents, call.callId) });
      }
    }
  } finally {
    client.stopClient();
    await ctx.close();
  }
  return { calls: results.length };
};

function eventsOf(all, callId) {
  return all.filter((e) => e.call_id === callId);
}

/**
 * A joined, encrypted room that holds us and `invitee`: reused when one exists, created
 * (private DM with m.room.encryption in its initial state) when not.
 */
async function directRoom(client, invitee, emit) {
  const me = client.getUserId();
  for (const room of client.getRooms()) {
    if (room.getMyMembership() !== 'join' || !room.hasEncryptionStateEvent()) continue;
    const members = room.getMembers().filter((m) => m.membership === 'join' || m.membership === 'invite');
    const ids = new Set(members.map((m) => m.userId));
    if (ids.size === 2 && ids.has(me) && ids.has(invitee)) return room.roomId;
  }
  const { room_id: roomId } = await client.createRoom({
    preset: 'trusted_private_chat',
    is_direct: true,
    invite: [invitee],
    initial_state: [
      { type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } },
    ],
  });
  emit({ event: 'room_created', room_id: roomId });
  await until(() => client.getRoom(roomId), 10000, `room ${roomId} in the sync`);
  return roomId;
}
