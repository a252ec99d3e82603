// watchdog.js — stops a server's process group when the process that started it is gone, or
// after a lifetime, so that no test server outlives its run. Spawned detached by codeServer.js.
// Usage: node watchdog.js PARENT_PID GROUP_PID LIFETIME_S   (LIFETIME_S 0 = no limit)
'use strict';
const [parent, group, lifetimeS] = process.argv.slice(2).map(Number);
const t0 = Date.now();
const alive = (pid, pgid = false) => {
  try {
    process.kill(pgid ? -pid : pid, 0);
    return true;
  } catch {
    return false;
  }
};
const timer = setInterval(() => {
  if (!alive(group, true)) return process.exit(0);
  const expired = lifetimeS > 0 && Date.now() - t0 > lifetimeS * 1000;
  if (alive(parent) && !expired) return;
  clearInterval(timer);
  try {
    process.kill(-group, 'SIGTERM');
  } catch {
    process.exit(0);
  }
  setTimeout(() => {
    try {
      process.kill(-group, 'SIGKILL');
    } catch {
      /* already gone */
    }
    process.exit(0);
  }, 5000);
}, 1000);
