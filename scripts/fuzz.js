#!/usr/bin/env node
// npm run fuzz: property-based fuzzing of the public API, the native boundary, the file readers and
// every export called with junk
// (test/fuzz/). Each chunk runs in a child process, so a native crash (a signal) is recorded with
// its seed instead of killing the run. Writes a JSON and a Markdown summary to bench/results/.
//   node scripts/fuzz.js [--runs 100000] [--seed N] [--chunks 4] [--out bench/results]
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const total = Number(opt('runs', 100000));
const baseSeed = Number(opt('seed', Date.now() % 2 ** 31));
const chunks = Number(opt('chunks', 4));
const outDir = path.resolve(opt('out', path.join(__dirname, '..', 'bench', 'results')));
// Share of the cases per target (header cases write a file each, so they get fewer).
const SHARES = { tensor: 0.12, forward: 0.13, merge: 0.13, layer: 0.15, async: 0.08, native: 0.15, header: 0.07, config: 0.05, surface: 0.07, gguf: 0.05 };

const root = path.join(__dirname, '..');
const report = opt('report', null);
if (report) {
  // Rewrites the Markdown summary of an earlier run from its JSON.
  fs.writeFileSync(report.replace(/\.json$/, '.md'), markdown(JSON.parse(fs.readFileSync(report, 'utf8'))) + '\n');
} else {
  run();
}

function run() {
  const results = [];
  const t0 = Date.now();
  let chunkIndex = 0;
  for (const [target, share] of Object.entries(SHARES)) {
    const runs = Math.round(total * share);
    for (let c = 0; c < chunks; c++) {
      const n = Math.floor(runs / chunks) + (c < runs % chunks ? 1 : 0);
      if (n === 0) continue;
      const seed = (baseSeed + 7919 * chunkIndex++) % 2 ** 31;
      const r = spawnSync(process.execPath, ['-r', './scripts/ts-hook.js', 'test/fuzz/child.ts', `${target}:${n}`, String(seed)], {
        cwd: root,
        encoding: 'utf8',
        maxBuffer: 64 * 2 ** 20,
        env: process.env,
      });
      const line = (r.stdout || '').trim().split('\n').filter(Boolean).pop();
      let res;
      try {
        res = JSON.parse(line);
      } catch {
        res = { target, runs: 0, seed, failed: true, error: `no result (exit ${r.status}, signal ${r.signal}): ${(r.stderr || '').slice(-1500)}` };
      }
      res.requested = n;
      res.crashed = r.signal !== null || (r.status !== 0 && r.status !== 1);
      if (res.crashed) res.error = `child died (exit ${r.status}, signal ${r.signal}); rerun: node -r ./scripts/ts-hook.js test/fuzz/child.ts ${target}:${n} ${seed}\n${(r.stderr || '').slice(-1500)}`;
      results.push(res);
      const status = res.crashed ? 'CRASH' : res.failed ? 'FAIL' : 'ok';
      console.log(`${target.padEnd(8)} chunk ${c + 1}/${chunks} seed ${seed}: ${res.runs} cases (${res.valid ?? 0} valid, ${res.invalid ?? 0} invalid) ${status}${res.failed ? `: ${res.error}` : ''}`);
    }
  }

  const summary = {
    date: new Date().toISOString(),
    machine: `${os.cpus()[0]?.model ?? 'unknown cpu'}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.platform()} ${os.release()}, node ${process.version}`,
    command: `node scripts/fuzz.js ${args.join(' ')}`.trim(),
    seed: baseSeed,
    requested: total,
    cases: results.reduce((a, r) => a + (r.runs || 0), 0),
    valid: results.reduce((a, r) => a + (r.valid || 0), 0),
    invalid: results.reduce((a, r) => a + (r.invalid || 0), 0),
    failures: results.filter((r) => r.failed && !r.crashed).length,
    crashes: results.filter((r) => r.crashed).length,
    peakRssMB: Math.max(...results.map((r) => r.rssMB || 0)),
    seconds: Math.round((Date.now() - t0) / 1000),
    results,
  };
  fs.mkdirSync(outDir, { recursive: true });
  const stamp = summary.date.slice(0, 19).replace(/[:T]/g, '-');
  const base = path.join(outDir, `fuzz-${stamp}`);
  fs.writeFileSync(`${base}.json`, JSON.stringify(summary, null, 2) + '\n');
  fs.writeFileSync(`${base}.md`, markdown(summary) + '\n');
  console.log(`\n${summary.cases} cases, ${summary.failures} failures, ${summary.crashes} crashes in ${summary.seconds} s -> ${base}.{json,md}`);
  process.exitCode = summary.failures + summary.crashes > 0 || summary.cases < total ? 1 : 0;
}

function markdown(summary) {
  const results = summary.results;
  const sumOf = (rs, k) => rs.reduce((a, r) => a + (r[k] || 0), 0);
  const api = results.filter((r) => r.target !== 'native' && r.target !== 'surface');
  const raw = results.filter((r) => r.target === 'native');
  const junk = results.filter((r) => r.target === 'surface');
  return [
  `# lorakit fuzz run ${summary.date}`,
  '',
  `- machine: ${summary.machine}`,
  `- command: \`${summary.command}\` (base seed ${summary.seed})`,
  `- cases: ${summary.cases} of ${summary.requested} requested: ${sumOf(api, 'valid')} valid calls checked against float64 references (or exact expected bytes/values), ${sumOf(api, 'invalid')} invalid calls that had to throw a typed error naming the argument, ${sumOf(raw, 'runs')} random raw native-binding calls that had to return or throw an error with a LORAKIT_ code, ${sumOf(junk, 'runs')} calls of every exported function/constructor with junk arguments that had to succeed or throw a lorakit error class`,
  `- property failures: ${summary.failures}; crashes (child killed by a signal): ${summary.crashes}; peak RSS of a child: ${summary.peakRssMB} MB; ${summary.seconds} s`,
  '',
  '| target | cases | valid | invalid | failed | ms |',
  '|---|---|---|---|---|---|',
  ...[...new Set(results.map((r) => r.target))].map((t) => {
    const rs = results.filter((r) => r.target === t);
    const sum = (k) => rs.reduce((a, r) => a + (r[k] || 0), 0);
    return `| ${t} | ${sum('runs')} | ${sum('valid')} | ${sum('invalid')} | ${rs.filter((r) => r.failed).length} | ${sum('ms')} |`;
  }),
  '',
  ...results.filter((r) => r.failed).map((r) => `- ${r.target} seed ${r.seed}: ${r.error}\n  counterexample: \`${r.counterexample}\``),
].join('\n');
}
