// The fake microphone's input for the browser end-to-end runs: a steady sine tone as a 48 kHz
// mono 16-bit PCM WAV, which Chromium plays in a loop as its capture device
// (--use-file-for-fake-audio-capture). The page measures the same frequency (Goertzel) in the
// oracle's decrypted audio: the echo agent sends back what it heard.

import { writeFile } from 'node:fs/promises';

/**
 * The bytes of a WAV file holding `seconds` of a `hz` sine at `amplitude` (0..1), with 10 ms
 * fades at both ends so the loop point does not click.
 */
export function toneWav({ hz, seconds = 10, rate = 48000, amplitude = 0.5 }) {
  if (!(Number.isFinite(hz) && hz > 0 && hz < rate / 2)) {
    throw new RangeError(`tone frequency must be in (0, ${rate / 2}) Hz, got ${hz}`);
  }
  if (!(Number.isFinite(seconds) && seconds > 0 && seconds <= 600)) {
    throw new RangeError(`tone length must be in (0, 600] s, got ${seconds}`);
  }
  if (!(Number.isFinite(amplitude) && amplitude > 0 && amplitude <= 1)) {
    throw new RangeError(`amplitude must be in (0, 1], got ${amplitude}`);
  }
  const n = Math.round(seconds * rate);
  const fade = Math.round(rate / 100);
  const data = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) {
    const env = Math.min(1, i / fade, (n - 1 - i) / fade);
    const v = Math.round(amplitude * env * 32767 * Math.sin((2 * Math.PI * hz * i) / rate));
    data.writeInt16LE(v, i * 2);
  }
  const header = Buffer.alloc(44);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28); // byte rate
  header.writeUInt16LE(2, 32); // block align
  header.writeUInt16LE(16, 34); // bits per sample
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]);
}

/** Writes the tone of `toneWav(opts)` to `path`. */
export async function writeToneWav(path, opts) {
  await writeFile(path, toneWav(opts));
  return path;
}
