// In-page half of the browser peer (see peer.mjs): a LiveKit participant made with the
// official livekit-client, loaded unbundled from node_modules by peer.mjs's tiny server.
// peer.mjs calls window.runPeer(cfg) and gets back the result object it prints.

import {
  ExternalE2EEKeyProvider,
  LocalAudioTrack,
  Room,
  RoomEvent,
  Track,
  isE2EESupported,
  setLogLevel,
} from '/lk/livekit-client.esm.mjs';

const log = (msg) => console.log(`[page] ${msg}`);

/** Goertzel power of `freq`, normalized as lk_peer.py does: 2*power/(N*energy) in [0, 1]. */
function goertzel(samples, freq, rate) {
  if (samples.length === 0) {
    return 0;
  }
  const coeff = 2 * Math.cos((2 * Math.PI * freq) / rate);
  let s1 = 0;
  let s2 = 0;
  let energy = 0;
  for (let i = 0; i < samples.length; i++) {
    const x = samples[i];
    energy += x * x;
    const s0 = x + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  if (energy === 0) {
    return 0;
  }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return Math.max(0, Math.min(1, (2 * power) / (samples.length * energy)));
}

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

/** A promise that rejects after `ms` with `what` in the message. */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves `ms` after now, or at once if `ms` <= 0. */
function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

window.runPeer = async (cfg) => {
  setLogLevel(cfg.lk_log_level ?? 'warn');
  const started = performance.now();
  // Everything the peer waits on ends by this time (peer.mjs's hard timeout is later).
  const deadline = started + cfg.budget_ms;
  const left = () => deadline - performance.now();

  const result = {
    frames: 0,
    power: 0,
    tracks: [],
    data: [],
    e2ee_errors: [],
    e2ee_states: [],
    sample_rate: 0,
    samples: 0,
    sent_data: 0,
    e2ee: false,
  };

  // --- audio graph: a collector for what we hear, an oscillator for what we say ---
  const ctx = new AudioContext({ sampleRate: 48000 });
  await within(ctx.resume(), 5000, 'AudioContext.resume');
  if (ctx.state !== 'running') {
    throw new Error(`AudioContext is ${ctx.state}, not running`);
  }
  result.sample_rate = ctx.sampleRate;
  await ctx.audioWorklet.addModule('/collector.js');
  const collector = new AudioWorkletNode(ctx, 'collector', {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { chunk: Math.round(ctx.sampleRate / 50) },
  });
  // Keep the collector in the rendered graph, silently.
  const silent = new GainNode(ctx, { gain: 0 });
  collector.connect(silent).connect(ctx.destination);
  const heard = [];
  let collectorDone;
  const collectorStopped = new Promise((resolve) => {
    collectorDone = resolve;
  });
  collector.port.onmessage = (ev) => {
    if (ev.data.samples) {
      heard.push(ev.data.samples);
    } else if (ev.data.done) {
      collectorDone();
    }
  };

  // --- room, with E2EE (media and data packets) when a key is given ---
  let room;
  if (cfg.key_hex) {
    if (!isE2EESupported()) {
      throw new Error('this browser does not support LiveKit E2EE (no encoded transforms)');
    }
    const keyProvider = new ExternalE2EEKeyProvider();
    const worker = new Worker('/lk/livekit-client.e2ee.worker.mjs', { type: 'module' });
    // `encryption` (not the deprecated `e2ee`) also turns on data-packet encryption.
    room = new Room({ encryption: { keyProvider, worker } });
    if (cfg.kdf === 'hkdf') {
      // An ArrayBuffer key: livekit-client imports it as HKDF key material.
      await keyProvider.setKey(hexToBytes(cfg.key_hex).buffer);
    } else {
      // A string key: livekit-client imports its UTF-8 bytes as PBKDF2 key material.
      await keyProvider.setKey(cfg.key_hex);
    }
    await room.setE2EEEnabled(true);
  } else {
    room = new Room();
  }

  const sources = [];
  room
    .on(RoomEvent.TrackSubscribed, (track, publication, participant) => {
      result.tracks.push({
        identity: participant.identity,
        kind: track.kind,
        source: publication.source,
        name: publication.trackName,
        encrypted: publication.isEncrypted,
        encryption: publication.trackInfo?.encryption ?? null,
      });
      log(`subscribed ${track.kind} of ${participant.identity} (encrypted: ${publication.isEncrypted})`);
      if (track.kind === Track.Kind.Audio) {
        // Chrome delivers remote WebRTC audio to WebAudio only while the stream also plays
        // in a media element; a muted one is enough.
        const el = track.attach();
        el.muted = true;
        document.body.appendChild(el);
        const src = new MediaStreamAudioSourceNode(ctx, {
          mediaStream: new MediaStream([track.mediaStreamTrack]),
        });
        src.connect(collector);
        sources.push(src);
      }
    })
    .on(RoomEvent.EncryptionError, (error, participant) => {
      const message = String(error?.message ?? error);
      const entry = {
        identity: participant?.identity ?? null,
        // The worker's CryptorError loses its `reason` field crossing postMessage; its
        // message keeps the reason's name as a prefix ("InvalidKey: Decryption failed: ...").
        reason: error?.reason ?? /^(InvalidKey|MissingKey|InternalError):/.exec(message)?.[1] ?? null,
        message,
      };
      result.e2ee_errors.push(entry);
      log(`encryption error: ${JSON.stringify(entry)}`);
    })
    .on(RoomEvent.ParticipantEncryptionStatusChanged, (enabled, participant) => {
      result.e2ee_states.push({ identity: participant?.identity ?? null, enabled });
      log(`encryption status of ${participant?.identity}: ${enabled}`);
    })
    .on(RoomEvent.Reconnecting, () => log('reconnecting (media/data connection lost)'))
    .on(RoomEvent.SignalReconnecting, () => log('signal reconnecting'))
    .on(RoomEvent.Reconnected, () => log('reconnected'))
    .on(RoomEvent.Disconnected, (reason) => log(`disconnected (reason ${reason})`))
    .on(RoomEvent.DataReceived, (payload, participant, kind, topic, encryptionType, identity) => {
      const entry = {
        from: participant?.identity ?? identity ?? null,
        topic: topic || null,
        text: new TextDecoder().decode(payload),
        encryption: encryptionType ?? null,
      };
      result.data.push(entry);
      log(`data from ${entry.from} (encryption type ${entry.encryption}): ${entry.text.length} chars`);
    });

  // Remote participants as they join (a participant present before we connect is found in
  // room.remoteParticipants instead).
  const joined = [];
  const joinWaiters = [];
  room.on(RoomEvent.ParticipantConnected, (p) => {
    joined.push(p);
    joinWaiters.splice(0).forEach((w) => w());
  });
  /** The first remote participant matching `pred`, once it has joined (bounded by the budget). */
  const remoteMatching = async (pred, what) => {
    for (;;) {
      const found = [...room.remoteParticipants.values(), ...joined].find(pred);
      if (found) {
        return found;
      }
      await within(new Promise((resolve) => joinWaiters.push(resolve)), left(), what);
    }
  };

  // No ICE servers: the server's JoinResponse lists public STUN servers, which are neither
  // reachable nor wanted here; host candidates on this machine are all a loopback SFU needs.
  const connectOpts = { autoSubscribe: true, rtcConfig: { iceServers: [] } };
  await within(room.connect(cfg.url, cfg.token, connectOpts), 15000, 'room.connect');
  log(`connected to room ${room.name} as ${room.localParticipant.identity}`);

  let sending = Promise.resolve();
  const sendData = cfg.send_data ?? [];
  if (sendData.length > 0) {
    sending = (async () => {
      // Send once the named participants (default: any one) are active, i.e. their
      // connection is up and they can receive data.
      const names = cfg.wait_for_identities ?? [];
      const targets =
        names.length > 0
          ? await Promise.all(names.map((n) => remoteMatching((p) => p.identity === n, `participant ${n}`)))
          : [await remoteMatching(() => true, 'a remote participant')];
      for (const p of targets) {
        await within(p.waitUntilActive(), left(), `${p.identity} to become active`);
      }
      const enc = new TextEncoder();
      for (const text of sendData) {
        await room.localParticipant.publishData(enc.encode(text), { reliable: true });
        result.sent_data += 1;
      }
      // Diagnostics only (an internal of livekit-client, hence the optional chaining).
      const dc = room.engine?.dataChannelForKind?.(0);
      log(
        `sent ${sendData.length} data messages once ${targets.map((p) => p.identity).join(', ')} ` +
          `active (reliable channel ${dc?.readyState}, ${dc?.bufferedAmount} bytes buffered)`,
      );
    })();
    // Do not leave an unhandled rejection behind; the error is rethrown below.
    sending.catch(() => {});
  }

  let oscillator;
  if (cfg.publish) {
    oscillator = new OscillatorNode(ctx, { type: 'sine', frequency: cfg.tone_hz });
    // 8000/32768 of full scale, the level lk_peer.py sends.
    const level = new GainNode(ctx, { gain: 8000 / 32768 });
    const out = new MediaStreamAudioDestinationNode(ctx, { channelCount: 1 });
    oscillator.connect(level).connect(out);
    oscillator.start();
    // userProvidedTrack: livekit-client neither re-acquires nor applies capture constraints.
    const localTrack = new LocalAudioTrack(out.stream.getAudioTracks()[0], undefined, true);
    await within(
      room.localParticipant.publishTrack(localTrack, {
        source: Track.Source.Microphone,
        name: 'tone',
      }),
      15000,
      'publishTrack',
    );
    log(`publishing ${cfg.tone_hz} Hz for ${cfg.seconds} s`);
  }

  // The call itself lasts `seconds` (as in lk_peer.py): a duration, not a wait for an event.
  await delay(cfg.seconds * 1000);

  // Then wait (bounded) for the messages we were told to expect, and for our sends.
  const expect = cfg.expect_data ?? 0;
  if (result.data.length < expect) {
    await within(
      new Promise((resolve) => {
        const check = () => {
          if (result.data.length >= expect) {
            room.off(RoomEvent.DataReceived, check);
            resolve();
          }
        };
        room.on(RoomEvent.DataReceived, check);
      }),
      left(),
      `${expect} data messages (got ${result.data.length})`,
    ).catch((e) => log(String(e.message)));
  }
  await sending;

  // Whether our own sender encrypted (the worker confirms this asynchronously after joining).
  result.e2ee = room.isE2EEEnabled;
  collector.port.postMessage('stop');
  await within(collectorStopped, 5000, 'the audio collector to stop');
  oscillator?.stop();
  sources.forEach((s) => s.disconnect());
  await within(room.disconnect(), 5000, 'room.disconnect').catch((e) => log(String(e.message)));
  await ctx.close();

  let total = 0;
  for (const c of heard) {
    total += c.length;
  }
  const all = new Float32Array(total);
  let at = 0;
  for (const c of heard) {
    all.set(c, at);
    at += c.length;
  }
  result.samples = total;
  result.frames = Math.floor(total / Math.round(result.sample_rate / 50));
  // Skip the first second (jitter buffer, key setup), as lk_peer.py does.
  result.power = goertzel(all.subarray(result.sample_rate), cfg.listen_hz, result.sample_rate);
  log(`heard ${total} samples at ${result.sample_rate} Hz; ${cfg.listen_hz} Hz power ${result.power.toFixed(3)}`);
  return result;
};

window.peerReady = true;
