// CPU time and memory of a process and all its descendants, from Linux's /proc: what a
// Chromium browser (its browser, renderer, GPU, network and audio processes) costs.

import { readFileSync, readdirSync } from 'node:fs';

// USER_HZ: the unit of utime/stime in /proc/<pid>/stat; 100 on every Linux this runs on.
const TICKS_PER_S = 100;

function stat(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may hold spaces.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), utime: Number(f[11]), stime: Number(f[12]) };
  } catch {
    return null;
  }
}

function kib(pid, file, key) {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/${file}`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * {pids, cpu_ms, rss_kib, pss_kib, private_kib} summed over `root` and its descendants, or null
 * when `root` is gone. cpu_ms is user + system time since each process started. rss counts the
 * pages the processes share once per process; pss splits shared pages among all their users
 * (so it drops when another browser starts); private (clean + dirty) is what the tree alone
 * holds: the cost of one more browser.
 */
export function processTree(root) {
  const parent = new Map();
  const stats = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = stat(name);
    if (s) {
      parent.set(Number(name), s.ppid);
      stats.set(Number(name), s);
    }
  }
  if (!stats.has(root)) return null;
  const inTree = (pid) => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; p = parent.get(p) ?? 0, hops++) {
      if (p === root) return true;
    }
    return false;
  };
  let ticks = 0;
  let rss = 0;
  let pss = 0;
  let priv = 0;
  let pids = 0;
  for (const [pid, s] of stats) {
    if (!inTree(pid)) continue;
    pids++;
    ticks += s.utime + s.stime;
    rss += kib(pid, 'status', 'VmRSS');
    pss += kib(pid, 'smaps_rollup', 'Pss');
    priv += kib(pid, 'smaps_rollup', 'Private_Clean') + kib(pid, 'smaps_rollup', 'Private_Dirty');
  }
  return { pids, cpu_ms: Math.round((ticks * 1000) / TICKS_PER_S), rss_kib: rss, pss_kib: pss, private_kib: priv };
}

/** The direct children of `pid` whose command line contains `needle`. */
export function childrenMatching(pid, needle) {
  const found = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = stat(name);
    if (!s || s.ppid !== pid) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) found.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}
