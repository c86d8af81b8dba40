#!/usr/bin/env node
// Builds the native addon at install time: cmake-js (CMakeLists.txt) when cmake is present, with
// the CUDA backend when a toolkit is found; a CPU-only retry; then node-gyp (binding.gyp).
// LORAKIT_SKIP_BUILD=1 skips; LORAKIT_CUDA=OFF forces a CPU build; LORAKIT_BUILD=gyp forces node-gyp.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.join(__dirname, '..');
const env = process.env;
if (env.LORAKIT_SKIP_BUILD === '1') {
  console.log('lorakit: LORAKIT_SKIP_BUILD=1, not building the native addon');
  process.exit(0);
}

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  return r.status === 0;
}

function hasCmake() {
  const r = spawnSync('cmake', ['--version'], { stdio: 'ignore' });
  return r.status === 0;
}

function cmakeJs(cuda) {
  let bin;
  try {
    bin = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  } catch {
    return false;
  }
  return run(process.execPath, [bin, 'rebuild', '--log-level', 'warn', `--CDLORAKIT_CUDA=${cuda}`]);
}

function nodeGyp() {
  const gyp = env.npm_config_node_gyp;
  if (gyp) return run(process.execPath, [gyp, 'rebuild']);
  return run('node-gyp', ['rebuild']);
}

const forced = (env.LORAKIT_BUILD || '').toLowerCase();
const cuda = (env.LORAKIT_CUDA || 'auto').toUpperCase() === 'OFF' ? 'OFF' : env.LORAKIT_CUDA === 'ON' ? 'ON' : 'auto';
let ok = false;
if (forced !== 'gyp' && hasCmake()) {
  ok = cmakeJs(cuda);
  if (!ok && cuda !== 'OFF') {
    console.warn('lorakit: the cmake build failed; retrying CPU-only');
    ok = cmakeJs('OFF');
  }
  if (!ok) console.warn('lorakit: cmake-js failed; falling back to node-gyp');
}
if (!ok) ok = nodeGyp();
if (!ok) {
  console.error(
    'lorakit: could not build the native addon.\n' +
      '  Needs: a C++17 compiler (g++ or clang), make and python3 (node-gyp), or cmake >= 3.18 (cmake-js).\n' +
      '  Then run: npm rebuild lorakit'
  );
  process.exit(1);
}
