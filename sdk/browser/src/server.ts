/**
 * The user's side of the oracle-calls server API (docs/PROTOCOL.md §6, §8.1, §13.4), as the
 * Rust client's `crates/client/src/server.rs`: a Matrix OpenID token as
 * `Authorization: Bearer <token>` (never in a URL), error bodies (§6.7) turned into
 * {@link OracleCallError} `server` with the HTTP status and the server's code, network
 * failures into `serverUnreachable`. Idempotent requests (well-known, sync, update, list) are
 * retried on network errors and 5xx a bounded number of times with doubling back-off; the
 * prekey claim never is (a retry would use up another one-time prekey).
 */

import { OracleCallError } from './errors.js';
import { parseSignedPrekey, type SignedPrekey } from './prekeys.js';
import {
  type CallReason,
  type CallStatus,
  type CallType,
  callIdPathSegment,
  isCallStatus,
  parseTimestamp,
} from './protocol.js';
import { parseWellKnown, type WellKnown } from './wellknown.js';

/** The `fetch` this module needs (the global one by default; tests pass a fake). */
export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/** `POST /calls/{callId}/sync` answer (§6.2). */
export interface SyncResponse {
  callId: string;
  /** Always `active` on success. */
  status: CallStatus;
  livekitUrl: string;
  /** A LiveKit join JWT: a bearer secret, never log it. */
  token: string;
  tokenExpiresAt: string;
}

/** The answer to a room claim (§6.9). */
export interface RoomClaimResponse {
  roomId: string;
  livekitUrl: string;
  token: string;
  tokenExpiresAt: string;
  /** When the claim lapses if no sync took the room (RFC 3339). */
  claimExpiresAt: string;
}

/** The call summary (§6). */
export interface CallSummary {
  callId: string;
  callType: CallType;
  callStatus: CallStatus;
  sessionId: string;
  roomId: string;
  userDid: string;
  oracleDid: string;
  callStartedAt: string;
  callEndedAt?: string;
  /** Why it ended, or the agent's last report; any string (servers may add reasons). */
  reason?: CallReason | string;
}

/** `GET /calls` query (§6.5). */
export interface ListCallsQuery {
  cursor?: string;
  limit?: number;
  status?: CallStatus;
  sessionId?: string;
}

/** `GET /calls` answer (§6.5). */
export interface ListCallsResponse {
  calls: CallSummary[];
  nextCursor?: string;
}

/** Options of {@link ServerApi}. */
export interface ServerApiOptions {
  /** Attempts of a retried request (default 4, as the Rust client). */
  attempts?: number;
  /** First back-off in ms, doubled after each failure (default 200). */
  backoffMs?: number;
  /** Per-request timeout in ms (default 15000). */
  timeoutMs?: number;
  /** How to wait between attempts (tests pass a fast one). */
  sleep?: (ms: number) => Promise<void>;
}

const LOOPBACK_V4 = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Whether `host` (a URL's hostname) is loopback: `localhost`, `127.0.0.0/8`, `::1`. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost' || h === '[::1]' || h === '::1') return true;
  const m = LOOPBACK_V4.exec(h);
  return m !== null && m.slice(1).every((x) => Number(x) <= 255);
}

/**
 * `https://` anywhere; `http://` only to a loopback host (§6.1).
 *
 * @throws OracleCallError `insecureUrl`, or `setup` for a URL that does not parse.
 */
export function requireSecureUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new OracleCallError('setup', `${url}: not a URL`);
  }
  if (u.protocol === 'https:' || (u.protocol === 'http:' && isLoopbackHost(u.hostname))) return u;
  throw new OracleCallError('insecureUrl', `refusing ${url}: use https:// (http:// is accepted on loopback only)`, {
    details: { url },
  });
}

/** A retryable failure (network, 5xx) or a final one. */
class Transient {
  constructor(
    readonly message: string,
    readonly status?: number,
    readonly serverCode?: string,
  ) {}
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `{"error": {"code", "message"}}` (§6.7), or the first 200 characters of the text. */
function errorBody(text: string): { code?: string; message: string } {
  try {
    const v = JSON.parse(text) as unknown;
    if (isObject(v) && isObject(v['error'])) {
      const e = v['error'];
      const out: { code?: string; message: string } = {
        message: typeof e['message'] === 'string' ? e['message'] : '',
      };
      if (typeof e['code'] === 'string') out.code = e['code'];
      return out;
    }
  } catch {
    // not JSON: fall through
  }
  return { message: text.slice(0, 200) };
}

function unexpected(status: number, what: string): OracleCallError {
  return new OracleCallError('server', `server answered ${status}: unexpected answer: ${what}`, { status });
}

function parseClaim(v: unknown, status: number): RoomClaimResponse {
  if (!isObject(v)) throw unexpected(status, 'not an object');
  for (const f of ['roomId', 'livekitUrl', 'token', 'tokenExpiresAt', 'claimExpiresAt']) {
    if (typeof v[f] !== 'string') throw unexpected(status, `${f} missing or not a string`);
  }
  for (const f of ['tokenExpiresAt', 'claimExpiresAt']) {
    try {
      parseTimestamp(v[f], f);
    } catch {
      throw unexpected(status, `${f} is not a timestamp`);
    }
  }
  return {
    roomId: v['roomId'] as string,
    livekitUrl: v['livekitUrl'] as string,
    token: v['token'] as string,
    tokenExpiresAt: v['tokenExpiresAt'] as string,
    claimExpiresAt: v['claimExpiresAt'] as string,
  };
}

function parseSync(v: unknown, status: number): SyncResponse {
  if (!isObject(v)) throw unexpected(status, 'not an object');
  for (const f of ['callId', 'status', 'livekitUrl', 'token', 'tokenExpiresAt']) {
    if (typeof v[f] !== 'string') throw unexpected(status, `${f} missing or not a string`);
  }
  if (!isCallStatus(v['status'])) throw unexpected(status, 'status is not a call status');
  try {
    parseTimestamp(v['tokenExpiresAt'], 'tokenExpiresAt');
  } catch {
    throw unexpected(status, 'tokenExpiresAt is not a timestamp');
  }
  return {
    callId: v['callId'] as string,
    status: v['status'],
    livekitUrl: v['livekitUrl'] as string,
    token: v['token'] as string,
    tokenExpiresAt: v['tokenExpiresAt'] as string,
  };
}

function parseSummary(v: unknown, status: number): CallSummary {
  if (!isObject(v)) throw unexpected(status, 'a call summary is not an object');
  for (const f of ['callId', 'callType', 'callStatus', 'sessionId', 'roomId', 'userDid', 'oracleDid', 'callStartedAt']) {
    if (typeof v[f] !== 'string') throw unexpected(status, `${f} missing or not a string`);
  }
  if (!isCallStatus(v['callStatus'])) throw unexpected(status, 'callStatus is not a call status');
  if (v['callType'] !== 'audio' && v['callType'] !== 'video') throw unexpected(status, 'callType is not audio or video');
  const out: CallSummary = {
    callId: v['callId'] as string,
    callType: v['callType'],
    callStatus: v['callStatus'],
    sessionId: v['sessionId'] as string,
    roomId: v['roomId'] as string,
    userDid: v['userDid'] as string,
    oracleDid: v['oracleDid'] as string,
    callStartedAt: v['callStartedAt'] as string,
  };
  for (const f of ['callEndedAt', 'reason'] as const) {
    const x = v[f];
    if (x === undefined || x === null) continue;
    if (typeof x !== 'string') throw unexpected(status, `${f} is not a string`);
    out[f] = x;
  }
  return out;
}

function parseList(v: unknown, status: number): ListCallsResponse {
  if (!isObject(v) || !Array.isArray(v['calls'])) throw unexpected(status, 'calls missing or not an array');
  const out: ListCallsResponse = { calls: v['calls'].map((c) => parseSummary(c, status)) };
  const next = v['nextCursor'];
  if (next !== undefined && next !== null) {
    if (typeof next !== 'string') throw unexpected(status, 'nextCursor is not a string');
    out.nextCursor = next;
  }
  return out;
}

function checkToken(token: string): void {
  if (typeof token !== 'string' || !/^[\x21-\x7e]{1,1024}$/.test(token)) {
    throw new OracleCallError('matrix', 'the OpenID token is not 1–1024 visible ASCII characters');
  }
}

/** A client of one oracle-calls server, for users. */
export class ServerApi {
  readonly baseUrl: string;
  private readonly fetchImpl: FetchLike;
  private readonly attempts: number;
  private readonly backoffMs: number;
  private readonly timeoutMs: number;
  private readonly sleep: (ms: number) => Promise<void>;

  /**
   * @param baseUrl the server (`https://`, or `http://` on loopback only).
   * @throws OracleCallError `insecureUrl`, `setup`
   */
  constructor(baseUrl: string, fetchImpl: FetchLike = (i, init) => globalThis.fetch(i, init), options: ServerApiOptions = {}) {
    requireSecureUrl(baseUrl);
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.fetchImpl = fetchImpl;
    this.attempts = Math.max(1, options.attempts ?? 4);
    this.backoffMs = options.backoffMs ?? 200;
    this.timeoutMs = options.timeoutMs ?? 15000;
    this.sleep = options.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** `GET /.well-known/oracle-calls`, parsed strictly (§6.1). */
  async wellKnown(): Promise<WellKnown> {
    return this.retry(() => this.once('GET', '/.well-known/oracle-calls'), (v, status) => {
      try {
        return parseWellKnown(v);
      } catch (e) {
        throw unexpected(status, e instanceof Error ? e.message : String(e));
      }
    });
  }

  /**
   * `POST /prekeys/claim` (§13.4): one signed prekey, not yet verified. Never retried. The
   * oracle DID is not sent (the server serves one oracle); it is given here so that callers
   * verify against the DID they chose, via `verifyPrekey`.
   *
   * @throws OracleCallError `server` (404: the oracle published none), `serverUnreachable`,
   *   `prekeyInvalid` (the answer is not a signed prekey).
   */
  async claimPrekey(openIdToken: string, _oracleDid?: string): Promise<SignedPrekey> {
    checkToken(openIdToken);
    const r = await this.once('POST', '/prekeys/claim', openIdToken, {});
    if (r instanceof Transient) {
      // Not repeated (a claim is not idempotent); a 5xx or a network failure is reported like
      // the Rust client's: the server could not be used, with its status when it answered.
      throw new OracleCallError('serverUnreachable', `server unreachable after 1 attempt: ${r.message}`, {
        ...(r.status === undefined ? {} : { status: r.status }),
        ...(r.serverCode === undefined ? {} : { serverCode: r.serverCode }),
        details: { attempts: 1, last: r.message },
      });
    }
    return parseSignedPrekey(r.body);
  }

  /**
   * `POST /rooms/{roomId}/claim` (§6.9): the call's LiveKit room claimed for an early join,
   * or null when this server offers no early join (404). Not retried: the early join only
   * saves time, and a caller whose claim failed joins with the sync's token.
   *
   * @throws OracleCallError `server` (409: the room name is taken, 429: too many open claims,
   *   an unexpected answer), `serverUnreachable`.
   */
  async claimRoom(roomId: string, openIdToken: string): Promise<RoomClaimResponse | null> {
    checkToken(openIdToken);
    let r: { status: number; body: unknown } | Transient;
    try {
      r = await this.once('POST', `/rooms/${encodeURIComponent(roomId)}/claim`, openIdToken);
    } catch (e) {
      if (e instanceof OracleCallError && e.status === 404) {
        return null;
      }
      throw e;
    }
    if (r instanceof Transient) {
      throw new OracleCallError('serverUnreachable', `server unreachable after 1 attempt: ${r.message}`, {
        ...(r.status === undefined ? {} : { status: r.status }),
        details: { attempts: 1, last: r.message },
      });
    }
    return parseClaim(r.body, r.status);
  }

  /** `POST /calls/{callId}/sync` with body `{}` (§6.2). Safe to repeat. */
  async sync(callId: string, openIdToken: string): Promise<SyncResponse> {
    checkToken(openIdToken);
    const path = `/calls/${callIdPathSegment(callId)}/sync`;
    return this.retry(() => this.once('POST', path, openIdToken, {}), parseSync);
  }

  /**
   * `POST /calls/{callId}/update` (§6.4): `callStatus` and/or `reason` (at least one). Safe
   * to repeat (a status to itself is an idempotent 200).
   */
  async update(callId: string, openIdToken: string, callStatus?: CallStatus, reason?: CallReason): Promise<CallSummary> {
    checkToken(openIdToken);
    if (callStatus === undefined && reason === undefined) {
      throw new OracleCallError('setup', 'an update needs a callStatus or a reason');
    }
    const body: Record<string, string> = {};
    if (callStatus !== undefined) body['callStatus'] = callStatus;
    if (reason !== undefined) body['reason'] = reason;
    const path = `/calls/${callIdPathSegment(callId)}/update`;
    return this.retry(() => this.once('POST', path, openIdToken, body), parseSummary);
  }

  /** `GET /calls` (§6.5): this user's calls, newest first. */
  async listCalls(openIdToken: string, query: ListCallsQuery = {}): Promise<ListCallsResponse> {
    checkToken(openIdToken);
    const q = new URLSearchParams();
    if (query.cursor !== undefined) q.set('cursor', query.cursor);
    if (query.limit !== undefined) q.set('limit', String(query.limit));
    if (query.status !== undefined) q.set('status', query.status);
    if (query.sessionId !== undefined) q.set('sessionId', query.sessionId);
    const qs = q.toString();
    return this.retry(() => this.once('GET', `/calls${qs === '' ? '' : `?${qs}`}`, openIdToken), parseList);
  }

  /** One request: a 2xx JSON body, a final error (thrown), or a {@link Transient}. */
  private async once(
    method: 'GET' | 'POST',
    path: string,
    token?: string,
    body?: unknown,
  ): Promise<{ status: number; body: unknown } | Transient> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (token !== undefined) headers['authorization'] = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), this.timeoutMs);
    let status: number;
    let text: string;
    try {
      const init: RequestInit = { method, headers, signal: ctrl.signal, credentials: 'omit' };
      if (body !== undefined) init.body = JSON.stringify(body);
      const resp = await this.fetchImpl(this.baseUrl + path, init);
      status = resp.status;
      text = await resp.text();
    } catch (e) {
      return new Transient(ctrl.signal.aborted ? `timed out after ${this.timeoutMs} ms` : e instanceof Error ? e.message : String(e));
    } finally {
      clearTimeout(timer);
    }
    if (status >= 500) {
      const eb = errorBody(text);
      return new Transient(`HTTP ${status}: ${eb.message}`, status, eb.code);
    }
    if (status < 200 || status >= 300) {
      const eb = errorBody(text);
      throw new OracleCallError('server', `server answered ${status}: ${eb.message}`, {
        status,
        ...(eb.code === undefined ? {} : { serverCode: eb.code }),
      });
    }
    try {
      return { status, body: JSON.parse(text) as unknown };
    } catch {
      throw unexpected(status, 'not JSON');
    }
  }

  private async retry<T>(
    req: () => Promise<{ status: number; body: unknown } | Transient>,
    parse: (v: unknown, status: number) => T,
  ): Promise<T> {
    let backoff = this.backoffMs;
    let last: Transient | undefined;
    for (let attempt = 1; attempt <= this.attempts; attempt++) {
      const r = await req();
      if (!(r instanceof Transient)) return parse(r.body, r.status);
      last = r;
      if (attempt < this.attempts) {
        await this.sleep(backoff);
        backoff *= 2;
      }
    }
    const msg = last?.message ?? 'no attempt made';
    throw new OracleCallError('serverUnreachable', `server unreachable after ${this.attempts} attempts: ${msg}`, {
      details: { attempts: this.attempts, last: msg },
      ...(last?.status === undefined ? {} : { status: last.status }),
      ...(last?.serverCode === undefined ? {} : { serverCode: last.serverCode }),
    });
  }
}
