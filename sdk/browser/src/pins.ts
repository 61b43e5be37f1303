/**
 * The trust store (trust on first use), as the Rust client's `crates/client/src/trust.rs`:
 * per oracle DID it pins what the client verified — the oracle key(s), the bot's Matrix user,
 * the bot devices (device id together with Ed25519 key), the prekey signing key once one was
 * offered, and with key transparency the verified record. Later calls use only what is pinned
 * and still published; a change is refused naming old and new, unless an explicit
 * {@link TrustOverride} names exactly the new value (docs/PROTOCOL.md §6.1, §13.4).
 */

import { OracleCallError } from './errors.js';
import { parsePrekeySigningKey } from './prekeys.js';
import type { KeyScheme } from './protocol.js';
import {
  type BotDevice,
  type CheckedKey,
  type OracleKeyInfo,
  type WellKnown,
  checkKey,
  checkOracleDid,
  SCHEME_PREFERENCE,
} from './wellknown.js';

/** A pinned oracle key (the well-known's form). */
export interface PinnedKey {
  keyId: string;
  scheme: KeyScheme;
  publicKey: string;
}

/** What the client trusts about one oracle (the Rust `OracleTrust`, same JSON names). */
export interface OraclePins {
  /** The oracle keys the client verified; it seals only to one of these. */
  keys: PinnedKey[];
  /** The bot's Matrix user id ('' = not known yet: pinned at the next call). */
  matrixUserId: string;
  /** The bot devices that may receive the call event's room key. */
  botDevices: BotDevice[];
  /** With key transparency: the epoch in which the pinned record was published. */
  ktEpoch?: number;
  /** With key transparency: the version of the pinned record. */
  ktVersion?: number;
  /** With key transparency: the pinned record (kept opaque here; `kt.ts` reads it). */
  ktRecord?: unknown;
  /** The prekey signing key (base64url) once the oracle offered one. */
  prekeySigningKey?: string;
}

/** Where pins live. Methods may be async (IndexedDB, a server). */
export interface PinStore {
  /** The pins of `oracleDid`, if any. */
  get(oracleDid: string): Promise<OraclePins | undefined> | OraclePins | undefined;
  /** Replaces the pins of `oracleDid`. */
  set(oracleDid: string, pins: OraclePins): Promise<void> | void;
  /** Key transparency: the newest checkpoint accepted from the directory `directoryKeyId`. */
  getKtCheckpoint?(directoryKeyId: string): Promise<unknown> | unknown;
  /** Key transparency: stores the newest checkpoint accepted from its directory. */
  setKtCheckpoint?(directoryKeyId: string, checkpoint: unknown): Promise<void> | void;
}

function clone<T>(v: T): T {
  return v === undefined ? v : (JSON.parse(JSON.stringify(v)) as T);
}

/** Pins in memory (lost on reload; tests, or apps that pin elsewhere). */
export class MemoryPinStore implements PinStore {
  private readonly oracles = new Map<string, OraclePins>();
  private readonly checkpoints = new Map<string, unknown>();

  get(oracleDid: string): OraclePins | undefined {
    return clone(this.oracles.get(oracleDid));
  }
  set(oracleDid: string, pins: OraclePins): void {
    this.oracles.set(oracleDid, clone(pins));
  }
  getKtCheckpoint(directoryKeyId: string): unknown {
    return clone(this.checkpoints.get(directoryKeyId));
  }
  setKtCheckpoint(directoryKeyId: string, checkpoint: unknown): void {
    this.checkpoints.set(directoryKeyId, clone(checkpoint));
  }
}

/** The part of the DOM `Storage` interface {@link LocalStoragePinStore} uses. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads stored pins back, refusing anything that is not their shape (`setup`). */
export function parsePins(json: unknown, where: string): OraclePins {
  const bad = (what: string) => new OracleCallError('setup', `the pin store ${where} is unusable: ${what}`);
  if (!isObject(json)) throw bad('not an object');
  const keys = json['keys'];
  if (!Array.isArray(keys)) throw bad('keys is not an array');
  const out: OraclePins = {
    keys: keys.map((k) => {
      if (!isObject(k) || typeof k['keyId'] !== 'string' || typeof k['scheme'] !== 'string' || typeof k['publicKey'] !== 'string') {
        throw bad('a key is not {keyId, scheme, publicKey}');
      }
      return { keyId: k['keyId'], scheme: k['scheme'] as KeyScheme, publicKey: k['publicKey'] };
    }),
    matrixUserId: typeof json['matrixUserId'] === 'string' ? json['matrixUserId'] : '',
    botDevices: [],
  };
  const devices = json['botDevices'] ?? [];
  if (!Array.isArray(devices)) throw bad('botDevices is not an array');
  for (const d of devices) {
    if (!isObject(d) || typeof d['deviceId'] !== 'string' || typeof d['ed25519'] !== 'string') {
      throw bad('a bot device is not {deviceId, ed25519}');
    }
    out.botDevices.push({ deviceId: d['deviceId'], ed25519: d['ed25519'] });
  }
  for (const f of ['ktEpoch', 'ktVersion'] as const) {
    const v = json[f];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(`${f} is not a number`);
    out[f] = v;
  }
  if (json['ktRecord'] !== undefined && json['ktRecord'] !== null) out.ktRecord = json['ktRecord'];
  const psk = json['prekeySigningKey'];
  if (psk !== undefined && psk !== null) {
    if (typeof psk !== 'string') throw bad('prekeySigningKey is not a string');
    out.prekeySigningKey = psk;
  }
  return out;
}

/**
 * Pins in a `Storage` (`window.localStorage`), one JSON item per oracle DID under `prefix`,
 * one per key-transparency directory under `prefix + "kt/"`. Pins are public facts (key ids,
 * device keys), never secrets.
 */
export class LocalStoragePinStore implements PinStore {
  constructor(
    private readonly storage: StorageLike,
    private readonly prefix = 'oracle-calls/pins/v1/',
  ) {}

  private read(key: string): unknown {
    let text: string | null;
    try {
      text = this.storage.getItem(key);
    } catch (e) {
      throw new OracleCallError('setup', `the pin store cannot be read: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (text === null) return undefined;
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new OracleCallError('setup', `the pin store item ${key} is not JSON`);
    }
  }

  private write(key: string, value: unknown): void {
    try {
      this.storage.setItem(key, JSON.stringify(value));
    } catch (e) {
      throw new OracleCallError('setup', `the pin store cannot be written: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  }

  get(oracleDid: string): OraclePins | undefined {
    const key = this.prefix + oracleDid;
    const v = this.read(key);
    return v === undefined ? undefined : parsePins(v, key);
  }
  set(oracleDid: string, pins: OraclePins): void {
    this.write(this.prefix + oracleDid, pins);
  }
  getKtCheckpoint(directoryKeyId: string): unknown {
    return this.read(`${this.prefix}kt/${directoryKeyId}`);
  }
  setKtCheckpoint(directoryKeyId: string, checkpoint: unknown): void {
    this.write(`${this.prefix}kt/${directoryKeyId}`, checkpoint);
  }
  /** Forgets the pins of `oracleDid` (after the user re-verified it out of band). */
  remove(oracleDid: string): void {
    this.storage.removeItem(this.prefix + oracleDid);
  }
}

/** Explicit acceptance of a change, after the user verified it out of band. */
export interface TrustOverride {
  /** Accept exactly this new oracle key id (it must be published). */
  oracleKey?: string;
  /** Accept exactly the bot device with this Ed25519 key (it may belong to a new bot user). */
  botDevice?: string;
  /** Accept exactly this new prekey signing key, or {@link NO_PREKEYS} for none. */
  prekeySigningKey?: string;
}

/** The {@link TrustOverride.prekeySigningKey} value that accepts an oracle without prekeys. */
export const NO_PREKEYS = 'none';

/** What key transparency verified, to pin with the rest (from `kt.ts`). */
export interface KtVerified {
  /** The verified record (pinned as `ktRecord`). */
  record: unknown;
  /** The epoch in which it was published. */
  epoch: number;
  /** Its version (1, 2, …). */
  version: number;
  /** The epoch in which the pinned record was replaced, for `oracleKeyChanged`. */
  changeEpoch?: number;
}

/** What a call may use. */
export interface Trusted {
  /** The key to seal to (pinned, still published, id checked). */
  key: PinnedKey;
  /** Its raw bytes and key id bytes. */
  checked: CheckedKey;
  /** The bot's Matrix user id. */
  bot: string;
  /** The bot devices (pinned and still published) that may get the room key. */
  devices: BotDevice[];
  /** Set: seal to a prekey this key signed (base64url and the 32 raw bytes). */
  prekeySigner?: { text: string; raw: Uint8Array };
  /** What was pinned after this check. */
  pins: OraclePins;
}

function samePinned(a: PinnedKey, b: PinnedKey): boolean {
  return a.keyId === b.keyId && a.scheme === b.scheme && a.publicKey === b.publicKey;
}
function sameDevice(a: BotDevice, b: BotDevice): boolean {
  return a.deviceId === b.deviceId && a.ed25519 === b.ed25519;
}
const ids = (keys: PinnedKey[]) => keys.map((k) => k.keyId).join(', ');
/** `ID (ed25519 KEY), …` as the Rust client lists devices. */
export const devicesText = (d: BotDevice[]) => d.map((x) => `${x.deviceId} (ed25519 ${x.ed25519})`).join(', ');

function preferred(keys: PinnedKey[]): CheckedKey {
  const reasons: string[] = [];
  for (const scheme of SCHEME_PREFERENCE) {
    for (const k of keys.filter((k) => k.scheme === scheme)) {
      try {
        return checkKey(k as OracleKeyInfo);
      } catch (e) {
        reasons.push(`${k.keyId}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }
  throw new OracleCallError('noUsableKey', `the oracle publishes no usable key: ${reasons.length === 0 ? 'none published' : reasons.join('; ')}`, {
    details: { reasons },
  });
}

/** Input of {@link checkAndPin}. */
export interface CheckAndPinInput {
  store: PinStore;
  /** The oracle the application chose to call. */
  oracleDid: string;
  /** The server's description (already parsed). */
  wellKnown: WellKnown;
  override?: TrustOverride;
  /** With key transparency: what the directory verified (`wellKnown` must be what it proved). */
  kt?: KtVerified;
}

/**
 * Checks the server's description of the oracle the application chose against the store,
 * pins what is new, and answers what the call may use (the Rust `TrustStore::check_verified`).
 *
 * @throws OracleCallError `wrongOracle`, `noUsableKey`, `oracleKeyChanged`,
 *   `botDeviceUnknown` (no devices published), `oracleBotChanged`, `botDeviceChanged`,
 *   `prekeySigningKeyChanged`, `setup` (store).
 */
export async function checkAndPin(input: CheckAndPinInput): Promise<Trusted> {
  const { store, oracleDid: oracle, wellKnown: wk, kt } = input;
  const ov = input.override ?? {};
  checkOracleDid(wk, oracle);
  const known = await store.get(oracle);
  const offered: PinnedKey[] = wk.keys.map((k) => ({ keyId: k.keyId, scheme: k.scheme, publicKey: k.publicKey }));

  // The key.
  let keys: PinnedKey[];
  let checked: CheckedKey;
  if (known !== undefined && known.keys.length > 0) {
    const still = offered.filter((k) => known.keys.some((p) => samePinned(p, k)));
    const accepted = ov.oracleKey === undefined ? undefined : offered.find((k) => k.keyId === ov.oracleKey);
    if (still.length > 0) {
      keys = known.keys;
      checked = preferred(still);
    } else if (accepted !== undefined) {
      checked = checkKey(accepted as OracleKeyInfo);
      keys = [accepted];
    } else {
      const epoch = kt !== undefined ? kt.changeEpoch : known.ktEpoch;
      throw new OracleCallError(
        'oracleKeyChanged',
        `the oracle ${oracle} now publishes key ${ids(offered)} but ${ids(known.keys)} was verified${
          epoch === undefined ? '' : ` (key transparency epoch ${epoch})`
        }; refusing to call (verify the change out of band, then accept exactly the new key id)`,
        { details: { oracle, pinned: ids(known.keys), offered: ids(offered), ...(epoch === undefined ? {} : { epoch }) } },
      );
    }
  } else {
    checked = preferred(offered);
    keys = [{ keyId: checked.info.keyId, scheme: checked.info.scheme, publicKey: checked.info.publicKey }];
  }

  // The bot's devices (and with them its user).
  if (wk.matrixDevices.length === 0) {
    throw new OracleCallError('botDeviceUnknown', `no trusted device of the oracle's bot: the server of ${oracle} publishes no device of its bot ${wk.matrixUserId}`);
  }
  const acceptedDevice = ov.botDevice === undefined ? undefined : wk.matrixDevices.find((d) => d.ed25519 === ov.botDevice);
  let bot: string;
  let devices: BotDevice[];
  if (known !== undefined && known.matrixUserId !== '') {
    if (known.matrixUserId !== wk.matrixUserId && acceptedDevice === undefined) {
      throw new OracleCallError(
        'oracleBotChanged',
        `the oracle ${oracle}'s bot is now ${wk.matrixUserId} but ${known.matrixUserId} was verified; refusing to call (verify the change, then accept exactly the new bot device)`,
        { details: { oracle, pinned: known.matrixUserId, offered: wk.matrixUserId } },
      );
    }
    const kept = known.matrixUserId === wk.matrixUserId ? wk.matrixDevices.filter((d) => known.botDevices.some((p) => sameDevice(p, d))) : [];
    if (kept.length > 0) {
      bot = known.matrixUserId;
      devices = kept;
    } else if (acceptedDevice !== undefined) {
      bot = wk.matrixUserId;
      devices = [acceptedDevice];
    } else {
      throw new OracleCallError(
        'botDeviceChanged',
        `the oracle ${oracle}'s bot devices are now ${devicesText(wk.matrixDevices)} but ${devicesText(known.botDevices)} was verified; refusing to call (verify the change, then accept exactly the new device's key)`,
        { details: { oracle, pinned: devicesText(known.botDevices), offered: devicesText(wk.matrixDevices) } },
      );
    }
  } else {
    bot = wk.matrixUserId;
    devices = wk.matrixDevices.map((d) => ({ ...d }));
  }

  // The prekey signing key: pinned once offered; changing or withdrawing it needs the override.
  const pinnedSigner = known?.prekeySigningKey;
  const offeredSigner = wk.prekeySigningKey;
  let signer: string | undefined;
  if (pinnedSigner !== undefined && offeredSigner !== pinnedSigner) {
    const offeredText = offeredSigner ?? NO_PREKEYS;
    if (ov.prekeySigningKey === offeredText) {
      signer = offeredSigner;
    } else {
      throw new OracleCallError(
        'prekeySigningKeyChanged',
        `the oracle ${oracle}'s prekey signing key is now ${offeredText} but ${pinnedSigner} was verified; refusing to call (verify the change, then accept exactly the new key, or \`none\`)`,
        { details: { oracle, pinned: pinnedSigner, offered: offeredText } },
      );
    }
  } else {
    signer = offeredSigner;
  }
  const prekeySigner = signer === undefined ? undefined : { text: signer, raw: parsePrekeySigningKey(signer) };

  const entry: OraclePins = { keys, matrixUserId: bot, botDevices: devices };
  const ktEpoch = kt !== undefined ? kt.epoch : known?.ktEpoch;
  const ktVersion = kt !== undefined ? kt.version : known?.ktVersion;
  const ktRecord = kt !== undefined ? kt.record : known?.ktRecord;
  if (ktEpoch !== undefined) entry.ktEpoch = ktEpoch;
  if (ktVersion !== undefined) entry.ktVersion = ktVersion;
  if (ktRecord !== undefined) entry.ktRecord = ktRecord;
  if (signer !== undefined) entry.prekeySigningKey = signer;
  if (JSON.stringify(known) !== JSON.stringify(entry)) await store.set(oracle, entry);

  return {
    key: { keyId: checked.info.keyId, scheme: checked.info.scheme, publicKey: checked.info.publicKey },
    checked,
    bot,
    devices,
    ...(prekeySigner === undefined ? {} : { prekeySigner }),
    pins: entry,
  };
}
