#!/usr/bin/env node
// CI's check of the install script's build (build/lorakit-build.json): made by the expected builder
// with no fallback taken, and, where nvcc exists, with every CUDA file that needs no cuBLAS
// compile-checked (or the CUDA backend linked in, where cuBLAS exists too).
//   node scripts/check-build.js cmake-js
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.join(__dirname, '..');
const want = process.argv[2] || 'cmake-js';
const file = path.join(root, 'build', 'lorakit-build.json');
function fail(msg) {
  console.error(`check-build: ${msg}`);
  process.exit(1);
}
if (!fs.existsSync(file)) fail(`${path.relative(root, file)} missing: the addon was not built by the install script`);
const stamp = JSON.parse(fs.readFileSync(file, 'utf8'));
console.log(`build: ${stamp.builder}, CUDA ${stamp.cuda}, backends ${stamp.backends.join(', ')}, ${stamp.seconds} s`);
if (stamp.builder !== want) fail(`the addon was built by ${stamp.builder}, expected ${want}`);
if (stamp.fallbacks.length) fail(`the build fell back: ${stamp.fallbacks.join('; ')}`);

const nvcc =
  spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' }).stdout.trim() ||
  (fs.existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : '');
if (!nvcc || stamp.cuda === 'OFF') {
  console.log(`CUDA: ${nvcc ? 'LORAKIT_CUDA=OFF' : 'no nvcc here'}, nothing to check`);
} else if (stamp.backends.includes('cuda')) {
  console.log(`CUDA: nvcc at ${nvcc}, backend linked in`);
} else {
  const expected = fs
    .readdirSync(path.join(root, 'native', 'cuda'))
    .filter((f) => f.endsWith('.cu') && !f.endsWith('_blas.cu'))
    .sort();
  const missing = expected.filter((f) => !stamp.cudaCheckedFiles.includes(f));
  if (missing.length) fail(`nvcc exists (${nvcc}) but these CUDA files were not compile-checked: ${missing.join(', ')}`);
  console.log(`CUDA: nvcc at ${nvcc} without cuBLAS; all ${expected.length} files that need no cuBLAS compile-checked`);
}
