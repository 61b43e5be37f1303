// The snapshot store: immutable snapshots, one timeline mark per phase, final phases stay final.

import { describe, expect, it } from 'vitest';

import { SnapshotStore, initialSnapshot, isFinal } from '../../src/state.js';

function clock(start = 1000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

describe('SnapshotStore', () => {
  it('starts idle with nothing known', () => {
    const s = new SnapshotStore(initialSnapshot('did:ixo:o')).get();
    expect(s).toMatchObject({
      phase: 'idle',
      callStatus: null,
      callId: null,
      timeline: [],
      encryption: { matrixEvent: false, localMedia: false, oracleMedia: null },
      oracle: { did: 'did:ixo:o', keyId: null, pinnedOnFirstUse: false, joined: false, level: 0 },
      decryptionFailures: 0,
      refusedTracks: 0,
      error: null,
    });
  });

  it('replaces the snapshot on change and keeps it on no change (useSyncExternalStore needs both)', () => {
    const store = new SnapshotStore(initialSnapshot('did:ixo:o'));
    const a = store.get();
    let calls = 0;
    store.subscribe(() => (calls += 1));
    store.update((s) => s);
    expect(store.get()).toBe(a);
    expect(calls).toBe(0);
    store.setPhase('resolving');
    const b = store.get();
    expect(b).not.toBe(a);
    expect(a.phase).toBe('idle');
    expect(b.phase).toBe('resolving');
    expect(calls).toBe(1);
    store.setPhase('resolving');
    expect(calls).toBe(1);
  });

  it('marks each phase once, in ms since the start', () => {
    const c = clock();
    const store = new SnapshotStore(initialSnapshot('did:ixo:o'), c.now);
    c.advance(12.4);
    store.mark('resolve');
    c.advance(30);
    store.mark('wrap');
    store.mark('resolve');
    expect(store.get().timeline).toEqual([
      { phase: 'resolve', ms: 12 },
      { phase: 'wrap', ms: 42 },
    ]);
  });

  it('never leaves a final phase', () => {
    const store = new SnapshotStore(initialSnapshot('did:ixo:o'));
    store.update((s) => ({ ...s, phase: 'failed' }));
    store.setPhase('active');
    expect(store.get().phase).toBe('failed');
    expect(isFinal('ended')).toBe(true);
    expect(isFinal('active')).toBe(false);
  });

  it('a listener that throws does not stop the others; unsubscribe works', () => {
    const store = new SnapshotStore(initialSnapshot('did:ixo:o'));
    let seen = 0;
    store.subscribe(() => {
      throw new Error('bad listener');
    });
    const off = store.subscribe(() => (seen += 1));
    store.setPhase('resolving');
    expect(seen).toBe(1);
    off();
    store.setPhase('wrapping');
    expect(seen).toBe(1);
  });
});
