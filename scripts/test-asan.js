#!/usr/bin/env node
// npm run test:asan: builds the addon with AddressSanitizer/LeakSanitizer (build-asan/, CMake
// option LORAKIT_SANITIZE=ON) and runs the jest suite against it, node preloading libasan. Any ASan
// error fails the run. Node and V8 leak a little at exit by design; leak reports are therefore
// counted only when a frame of lorakit.node is on the allocation stack (those are ours).
//   node scripts/test-asan.js [--no-build] [jest args...]
'use strict';
const { execFileSync, spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.join(__dirname, '..');
const args = process.argv.slice(2);
const build = !args.includes('--no-build');
const jestArgs = args.filter((a) => a !== '--no-build');
const addon = path.join(root, 'build-asan', 'Release', 'lorakit.node');

if (build || !fs.existsSync(addon)) {
  execFileSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--out', 'build-asan', '--log-level', 'warn',
    '--CDLORAKIT_SANITIZE=ON', '--CDLORAKIT_CUDA=OFF'], { cwd: root, stdio: 'inherit' });
}
const libasan = execFileSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).trim();
if (!fs.existsSync(libasan)) throw new Error(`libasan not found (gcc -print-file-name=libasan.so gave ${libasan})`);
const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-asan-'));

const env = {
  ...process.env,
  LD_PRELOAD: libasan,
  LORAKIT_NATIVE_PATH: addon,
  // A small quarantine keeps the memory tests meaningful; use-after-free in recent frees is still caught.
  ASAN_OPTIONS: `detect_leaks=1:halt_on_error=1:quarantine_size_mb=16:log_path=${path.join(logDir, 'asan')}`,
  LSAN_OPTIONS: 'report_objects=0',
};
const t0 = Date.now();
const jestJson = path.join(logDir, 'jest.json');
const r = spawnSync(process.execPath, [require.resolve('jest/bin/jest'), '--runInBand', '--json', `--outputFile=${jestJson}`, ...jestArgs], { cwd: root, env, stdio: 'inherit' });
// LeakSanitizer sets the exit status of a process that leaked (node's own leaks too), so the
// test outcome is read from jest's JSON report instead.
let jest = { success: false, numPassedTests: 0, numFailedTests: -1, numTotalTests: 0 };
try {
  jest = JSON.parse(fs.readFileSync(jestJson, 'utf8'));
} catch {
  // no report: jest itself died; counted as a failure below
}

// Each process that reported writes asan.<pid>.
let asanErrors = 0;
let ourLeaks = 0;
let foreignLeaks = 0;
const details = [];
for (const f of fs.readdirSync(logDir).filter((n) => n.startsWith('asan'))) {
  const text = fs.readFileSync(path.join(logDir, f), 'utf8');
  const errors = text.match(/ERROR: AddressSanitizer: [^\n]*/g) || [];
  asanErrors += errors.length;
  details.push(...errors.map((e) => `${f}: ${e}`));
  for (const block of text.split(/\n(?=(?:Direct|Indirect) leak of )/).slice(1)) {
    if (/lorakit\.node/.test(block)) {
      ourLeaks++;
      details.push(`${f}: ${block.split('\n').slice(0, 12).join('\n')}`);
    } else foreignLeaks++;
  }
}
const summary = [
  `test:asan ${new Date().toISOString()} on ${os.cpus()[0]?.model ?? 'cpu'} (${os.cpus().length} cores), node ${process.version}, ${path.basename(libasan)}`,
  `command: node scripts/test-asan.js ${args.join(' ')}`.trim(),
  `jest: ${jest.numPassedTests} passed, ${jest.numFailedTests} failed of ${jest.numTotalTests} tests (process exit ${r.status}${r.signal ? `, signal ${r.signal}` : ''}); ${Math.round((Date.now() - t0) / 1000)} s`,
  `AddressSanitizer errors: ${asanErrors}`,
  `leak reports with a lorakit.node frame: ${ourLeaks}`,
  `leak reports from node/V8/other addons only (not counted): ${foreignLeaks}`,
  ...details,
].join('\n');
console.log(`\n${summary}`);
const outDir = path.join(root, 'bench', 'results');
fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(path.join(outDir, `asan-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}.txt`), summary + '\n');
fs.rmSync(logDir, { recursive: true, force: true });
process.exitCode = jest.success && !r.signal && asanErrors === 0 && ourLeaks === 0 ? 0 : 1;
