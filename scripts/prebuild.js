#!/usr/bin/env node
// `npm pack` / `npm publish` (prepack): builds the CPU addon for each prebuilt platform and puts it,
// stripped, at prebuilds/<platform>-<arch>/lorakit.napi.glibc.node (scripts/addon-locate.js reads
// that layout). N-API 8, so one binary serves every Node version the package supports.
//   linux-x64:   cmake-js, -O3, every runtime-dispatched x86 path (portable, AVX2, AVX-512,
//                AVX512-BF16, AMX) in one binary
//   linux-arm64: cross-compiled with Debian's aarch64 toolchain (cmake/aarch64-linux-gnu.cmake):
//                apt-get install g++-aarch64-linux-gnu; NEON and portable paths
// Both link libstdc++ statically (LORAKIT_PREBUILT) and never need a CUDA library. Builds
// are incremental in build-prebuilds/<target>/. LORAKIT_PREBUILD_TARGETS=linux-x64 builds a subset;
// a target that cannot be built fails the pack (a tarball silently missing a binary is worse).
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { PREBUILT_FILE, PREBUILT_PLATFORMS } = require('./addon-locate');

const root = path.join(__dirname, '..');
const say = (msg) => console.log(`prebuild: ${msg}`);
function fail(msg) {
  console.error(`prebuild: ${msg}`);
  process.exit(1);
}

const TARGETS = {
  'linux-x64': { cmakeArgs: [], strip: 'strip', objdump: 'objdump', elfMachine: 62 },
  'linux-arm64': {
    cmakeArgs: [`--CDCMAKE_TOOLCHAIN_FILE=${path.join(root, 'cmake', 'aarch64-linux-gnu.cmake')}`],
    strip: 'aarch64-linux-gnu-strip',
    objdump: 'aarch64-linux-gnu-objdump',
    elfMachine: 183,
    needs: ['aarch64-linux-gnu-g++', 'aarch64-linux-gnu-strip'],
    install: 'apt-get install g++-aarch64-linux-gnu',
  },
};

if (process.platform !== 'linux' || process.arch !== 'x64') fail(`the prebuilt binaries are built on linux-x64; this is ${process.platform}-${process.arch}`);
const wanted = (process.env.LORAKIT_PREBUILD_TARGETS || PREBUILT_PLATFORMS.join(','))
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
for (const t of wanted) if (!TARGETS[t]) fail(`unknown target '${t}' (known: ${Object.keys(TARGETS).join(', ')})`);

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} failed (exit ${r.status})`);
}

// The oldest glibc the binaries must load on: 2.34 (Ubuntu 22.04, Debian 12, RHEL 9, Amazon Linux
// 2023). The build machine's glibc (Debian 12: 2.36) is newer, so a symbol that needs more fails
// the pack instead of shipping a binary that only loads on new distributions.
const MAX_GLIBC = [2, 34];

/** The highest GLIBC_x.y symbol version the binary needs (its minimum glibc). */
function minGlibc(objdump, file) {
  const r = spawnSync(objdump, ['-T', file], { encoding: 'utf8' });
  if (r.status !== 0) fail(`${objdump} -T ${file} failed (binutils)`);
  const versions = [...r.stdout.matchAll(/GLIBC_(\d+)\.(\d+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
  versions.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const v = versions.pop() || [0, 0];
  const needing = r.stdout.split('\n').filter((l) => l.includes(`GLIBC_${v[0]}.${v[1]}`)).map((l) => l.trim().split(/\s+/).pop());
  return { version: v, text: `${v[0]}.${v[1]}`, needing };
}

if (!has('cmake')) fail('cmake >= 3.18 is needed to build the prebuilt binaries');
const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
for (const name of wanted) {
  const t = TARGETS[name];
  for (const cmd of t.needs || []) if (!has(cmd)) fail(`${name}: ${cmd} not found (${t.install})`);
  const out = path.join(root, 'build-prebuilds', name);
  const t0 = Date.now();
  say(`${name}: building (cmake-js, CPU only, -O3, static libstdc++) in ${path.relative(root, out)}`);
  // configure every time (cheap on an existing folder: `build` alone would keep a cache made with
  // other options), then an incremental build.
  const args = ['--log-level', 'warn', '--out', out, '--CDLORAKIT_CUDA=OFF', '--CDLORAKIT_PREBUILT=ON', ...t.cmakeArgs];
  run(process.execPath, [cmakeJs, 'configure', ...args]);
  run(process.execPath, [cmakeJs, 'build', ...args]);
  const built = path.join(out, 'Release', 'lorakit.node');
  const dest = path.join(root, 'prebuilds', name, PREBUILT_FILE);
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.${process.pid}.tmp`;
  run(t.strip, ['--strip-unneeded', '-o', tmp, built]);
  const head = fs.readFileSync(tmp).subarray(0, 20);
  if (head.readUInt32BE(0) !== 0x7f454c46 || head.readUInt16LE(18) !== t.elfMachine) fail(`${name}: ${built} is not an ELF binary for this target`);
  const glibc = minGlibc(t.objdump, tmp);
  if (glibc.version[0] > MAX_GLIBC[0] || (glibc.version[0] === MAX_GLIBC[0] && glibc.version[1] > MAX_GLIBC[1])) {
    fs.unlinkSync(tmp);
    fail(`${name}: the binary needs glibc ${glibc.text} (for ${glibc.needing.join(', ')}); the prebuilt binaries must load on ${MAX_GLIBC.join('.')}`);
  }
  fs.renameSync(tmp, dest);
  const kb = Math.round(fs.statSync(dest).size / 1024);
  say(`${name}: ${path.relative(root, dest)} ${kb} KiB, needs glibc >= ${glibc.text} (${Math.round((Date.now() - t0) / 1000)} s)`);
}
// The host's own binary must load and report its x86 paths (the arm64 one is run by scripts/check-arm64.sh).
if (wanted.includes('linux-x64')) {
  const file = path.join(root, 'prebuilds', 'linux-x64', PREBUILT_FILE);
  const r = spawnSync(process.execPath, ['-e', `console.log(require(${JSON.stringify(file)}).backendInfo().cpuPaths.join(','))`], { encoding: 'utf8' });
  if (r.status !== 0) fail(`linux-x64: the prebuilt binary does not load: ${r.stderr}`);
  say(`linux-x64: loads; CPU paths on this machine: ${r.stdout.trim()}`);
}
