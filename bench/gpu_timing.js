// Per-call device time (cuda events around a loop) and host time (the loop's own wall time), as
// medians of 5 repetitions after a warm-up: when the two agree, the call is bound by the host.
'use strict';
const { performance } = require('perf_hooks');
const { cuda } = require('../dist');

/** fn(i) is called `iters` times per repetition; returns { dev, host } in µs per call. */
function timeCalls(fn, iters) {
  for (let i = 0; i < 4; i++) fn(i);
  cuda.synchronize();
  const dev = [];
  const host = [];
  for (let rep = 0; rep < 5; rep++) {
    let h = 0;
    const ms = cuda.timeMs(() => {
      const t0 = performance.now();
      for (let i = 0; i < iters; i++) fn(i);
      h = performance.now() - t0;
    });
    dev.push((ms * 1000) / iters);
    host.push((h * 1000) / iters);
  }
  const med = (a) => a.sort((x, y) => x - y)[2];
  return { dev: med(dev), host: med(host) };
}

module.exports = { timeCalls };
