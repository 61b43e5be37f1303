// React binding (optional peer dependency: react >= 18).
//
//   const { snapshot, start, end } = useOracleCall(client);
//   <button onClick={() => start({ oracleDid, type: 'audio' })}>Call</button>
//   {snapshot?.phase}

import { useCallback, useState, useSyncExternalStore } from 'react';

import type { Call, CallOptions } from './call.js';
import type { OracleClient } from './client.js';
import { OracleCallError } from './errors.js';
import type { CallSnapshot } from './state.js';

const noCall = (): (() => void) => () => undefined;
const nothing = (): null => null;

/** The current snapshot of `call` (null when there is none), kept up to date. */
export function useCallSnapshot(call: Call | null | undefined): CallSnapshot | null {
  return useSyncExternalStore<CallSnapshot | null>(
    call ? call.subscribe : noCall,
    call ? call.getSnapshot : nothing,
    call ? call.getSnapshot : nothing,
  );
}

export interface UseOracleCall {
  /** The current (or last) call, null before the first. */
  call: Call | null;
  /** Its snapshot, re-rendered on every change. */
  snapshot: CallSnapshot | null;
  /** Places a call (call it from the click handler: audio may only start after a gesture). */
  start(opts: CallOptions): Call;
  /** Hangs up the current call (idempotent). */
  end(): Promise<void>;
}

/** Calls with `client` and follows the call's state. */
export function useOracleCall(client: OracleClient | null | undefined): UseOracleCall {
  const [call, setCall] = useState<Call | null>(null);
  const snapshot = useCallSnapshot(call);
  const start = useCallback(
    (opts: CallOptions): Call => {
      if (!client) {
        throw new OracleCallError('setup', 'useOracleCall: no client (sign in first)');
      }
      const c = client.callOracle(opts);
      setCall(c);
      return c;
    },
    [client],
  );
  const end = useCallback((): Promise<void> => (call ? call.end() : Promise.resolve()), [call]);
  return { call, snapshot, start, end };
}
