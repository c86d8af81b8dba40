#!/usr/bin/env node
// The install script: nothing to do when an up-to-date local build exists (kept, never rebuilt) or
// when the prebuilt binary for this platform loads; otherwise builds from source and says why:
// cmake-js (CMakeLists.txt) when cmake is present, else node-gyp (binding.gyp). Each outcome is
// printed, and a source build writes build/lorakit-build.json (builder, CUDA mode, backends, the
// CUDA files compile-checked, fallbacks taken), which .ci/run asserts on.
//   LORAKIT_BUILD_FROM_SOURCE=1  build (or keep an up-to-date build) even when a prebuilt binary fits
//   LORAKIT_CUDA=ON|OFF|auto     ON: the CUDA backend or a failed install, never a silent CPU build;
//                                auto (default): CUDA when nvcc and cuBLAS exist, else CPU-only
//   LORAKIT_BUILD=cmake|gyp      the builder; LORAKIT_SKIP_BUILD=1 does nothing
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const locate = require('./addon-locate');

const root = path.join(__dirname, '..');
const env = process.env;
const STAMP = path.join(root, 'build', 'lorakit-build.json');
const rel = (p) => path.relative(root, p) || '.';
const say = (msg) => console.log(`lorakit: ${msg}`);

function fail(msg) {
  console.error(`lorakit: ${msg}`);
  process.exit(1);
}

if (locate.truthy(env.LORAKIT_SKIP_BUILD)) {
  say('LORAKIT_SKIP_BUILD=1, not building the native addon');
  process.exit(0);
}

const cudaRaw = (env.LORAKIT_CUDA || 'auto').trim();
const cuda = cudaRaw.toUpperCase();
if (!['AUTO', 'ON', 'OFF'].includes(cuda)) fail(`LORAKIT_CUDA must be ON, OFF or auto, got '${cudaRaw}'`);
const builder = (env.LORAKIT_BUILD || '').toLowerCase();
if (!['', 'cmake', 'gyp'].includes(builder)) fail(`LORAKIT_BUILD must be cmake or gyp, got '${env.LORAKIT_BUILD}'`);
const fromSource = locate.truthy(env.LORAKIT_BUILD_FROM_SOURCE);

function readStamp(addon) {
  try {
    const s = JSON.parse(fs.readFileSync(STAMP, 'utf8'));
    return s.addonMtimeMs === fs.statSync(addon).mtimeMs ? s : null;  // a build made since is not described by it
  } catch {
    return null;
  }
}

/** The backends compiled into an addon, by loading it (null if it does not load). */
function compiledBackends(file) {
  try {
    return require(file).backendInfo().compiled;
  } catch {
    return null;
  }
}

/** Why the up-to-date local build does not fit the requested configuration, or null if it does. */
function mismatch(local) {
  const stamp = readStamp(local.path);
  if (builder) {
    const want = builder === 'gyp' ? 'node-gyp' : 'cmake-js';
    if (!stamp || stamp.builder !== want)
      return `was built by ${stamp ? stamp.builder : 'an unrecorded builder'} and LORAKIT_BUILD=${builder} asks for ${want}`;
  }
  if (cuda === 'AUTO') return null;
  const backends = stamp ? stamp.backends : compiledBackends(local.path);
  if (!backends) return 'it does not load';
  const hasCuda = backends.includes('cuda');
  if (cuda === 'ON' && !hasCuda) return 'has no CUDA backend (LORAKIT_CUDA=ON)';
  if (cuda === 'OFF' && hasCuda) return 'has the CUDA backend (LORAKIT_CUDA=OFF)';
  return null;
}

// 1. A local build newer than every source file is kept (the loader prefers it too).
const local = locate.localBuild(root);
let reason;
if (local.exists && local.upToDate) {
  const why = mismatch(local);
  if (!why) {
    const stamp = readStamp(local.path);
    const by = stamp ? ` by ${stamp.builder}, backends ${stamp.backends.join('+')}` : '';
    say(`keeping ${rel(local.path)} (built ${new Date(local.mtimeMs).toISOString()}${by}; newer than every source file). Delete build/ to rebuild it.`);
    process.exit(0);
  }
  reason = `${rel(local.path)} is up to date but ${why}`;
} else if (local.exists) {
  reason = `${rel(local.path)} is older than ${rel(local.newest.file)}`;
}

// 2. The prebuilt binary, unless a source build was asked for.
const asked = fromSource
  ? 'LORAKIT_BUILD_FROM_SOURCE=1'
  : cuda === 'ON'
    ? 'LORAKIT_CUDA=ON (the prebuilt binaries are CPU-only)'
    : builder
      ? `LORAKIT_BUILD=${builder}`
      : null;
if (asked) {
  reason = asked + (reason ? `; ${reason}` : '');
} else {
  const pre = locate.prebuilt(root);
  if (pre.exists) {
    try {
      require(pre.path);
      say(`using the prebuilt binary ${rel(pre.path)} (CPU backend), nothing to build. LORAKIT_BUILD_FROM_SOURCE=1 npm rebuild lorakit builds from source.`);
      process.exit(0);
    } catch (e) {
      reason = `the prebuilt binary ${rel(pre.path)} does not load here: ${e.message.split('\n')[0]}`;
    }
  } else {
    reason = `${pre.reason}${reason ? `; ${reason}` : ''}`;
  }
}

// 3. A source build.
function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  return r.status === 0;
}

function hasCmake() {
  return spawnSync('cmake', ['--version'], { stdio: 'ignore' }).status === 0;
}

function cmakeJs(mode) {
  let bin;
  try {
    bin = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  } catch {
    say('cmake-js is not installed');
    return false;
  }
  const m = mode === 'AUTO' ? 'auto' : mode;
  say(`running cmake-js rebuild (LORAKIT_CUDA=${m}); the compiler's progress follows`);
  return run(process.execPath, [bin, 'rebuild', '--log-level', 'warn', `--CDLORAKIT_CUDA=${m}`]);
}

function nodeGyp() {
  say('running node-gyp rebuild (CPU backend only)');
  const gyp = env.npm_config_node_gyp;
  if (gyp) return run(process.execPath, [gyp, 'rebuild']);
  return run('node-gyp', ['rebuild']);
}

/** The CUDA sources compiled by the check-only object libraries (nvcc without cuBLAS). */
function cudaCheckedFiles() {
  const out = [];
  const dir = path.join(root, 'build', 'CMakeFiles');
  for (const lib of ['lorakit_cuda_check.dir', 'lorakit_cuda_check_sm90.dir']) {
    const cu = path.join(dir, lib, 'native', 'cuda');
    if (fs.existsSync(cu)) for (const f of fs.readdirSync(cu)) if (f.endsWith('.cu.o')) out.push(f.slice(0, -2));
  }
  return out.sort();
}

const useCmake = builder !== 'gyp' && hasCmake();
say(
  `building the native addon from source because ${reason}. ` +
    `Builder: ${useCmake ? 'cmake-js' : 'node-gyp'}, CUDA: ${cuda === 'AUTO' ? 'auto' : cuda}; ` +
    'this takes a few minutes (npm shows the output with --foreground-scripts).',
);
const t0 = Date.now();
const fallbacks = [];
let used = null;
if (cuda === 'ON') {
  // ON means the CUDA backend or a failed install: no CPU-only retry, no node-gyp.
  if (builder === 'gyp') fail('LORAKIT_CUDA=ON needs the cmake-js build; node-gyp (LORAKIT_BUILD=gyp) builds the CPU backend only');
  if (!useCmake) fail('LORAKIT_CUDA=ON needs cmake >= 3.18 (and nvcc with cuBLAS/cuBLASLt); cmake was not found');
  if (!cmakeJs('ON'))
    fail(
      'the CUDA build failed (LORAKIT_CUDA=ON; the error is above). Not falling back to a CPU-only build.\n' +
        '  Unset LORAKIT_CUDA (auto) or set LORAKIT_CUDA=OFF for a CPU-only build.',
    );
  used = 'cmake-js';
} else {
  if (useCmake) {
    if (cmakeJs(cuda)) used = 'cmake-js';
    else if (cuda === 'AUTO') {
      fallbacks.push('cmake-js with CUDA auto failed; retried CPU-only');
      console.warn(
        'lorakit: WARNING: the cmake build with CUDA auto failed (the error is above); retrying CPU-only.\n' +
          '  For CUDA, fix that error and run: LORAKIT_CUDA=ON npm rebuild lorakit',
      );
      if (cmakeJs('OFF')) used = 'cmake-js';
    }
    if (!used) {
      if (builder === 'cmake') fail('the cmake-js build failed (LORAKIT_BUILD=cmake; the error is above)');
      fallbacks.push('cmake-js failed; used node-gyp');
      console.warn('lorakit: WARNING: cmake-js failed (the error is above); falling back to node-gyp (CPU backend only)');
    }
  }
  if (!used && nodeGyp()) used = 'node-gyp';
}
if (!used) {
  fail(
    'could not build the native addon.\n' +
      '  Needs: a C++17 compiler (g++ or clang), make and python3 (node-gyp), or cmake >= 3.18 (cmake-js).\n' +
      '  Then run: npm rebuild lorakit',
  );
}

const addon = locate.localBuildPath(root);
const backends = compiledBackends(addon);
if (!backends) fail(`the build finished but ${rel(addon)} does not load`);
const seconds = Math.round((Date.now() - t0) / 1000);
const checked = used === 'cmake-js' ? cudaCheckedFiles() : [];
const stamp = {
  builder: used,
  cuda: cuda === 'AUTO' ? 'auto' : cuda,
  backends,
  cudaCheckedFiles: checked,
  fallbacks,
  seconds,
  addonMtimeMs: fs.statSync(addon).mtimeMs,
};
const tmp = `${STAMP}.${process.pid}.tmp`;
fs.writeFileSync(tmp, `${JSON.stringify(stamp, null, 2)}\n`);
fs.renameSync(tmp, STAMP);
say(
  `built ${rel(addon)} with ${used} in ${seconds} s (backends: ${backends.join(', ')}` +
    `${checked.length ? `; CUDA kernels compile-checked: ${checked.length} files` : ''})`,
);
