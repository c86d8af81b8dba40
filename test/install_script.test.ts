/**
 * scripts/install.js in package-shaped folders, with stand-in cmake and node-gyp commands so that
 * nothing is compiled: it does nothing (one line) when the prebuilt binary fits or an up-to-date
 * local build exists, says why it builds, never falls back from LORAKIT_CUDA=ON (any case), and
 * records the builder and the fallbacks it took in build/lorakit-build.json.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LOCAL_REL, PREBUILT_REL, PackageDir, cleanEnv, makePackageDir, runInstall } from './helpers/package_dir';

const OLD = 500_000_000;
const NEW = 1_700_000_000;

let pkg: PackageDir;
let bin: string;
let gypMarker: string;
beforeEach(() => {
  pkg = makePackageDir();
  pkg.touchSource(OLD);
  bin = path.join(pkg.dir, 'fake-bin');
  fs.mkdirSync(bin);
  // cmake that answers --version and fails anything else: a broken (CUDA) build in milliseconds.
  fs.writeFileSync(
    path.join(bin, 'cmake'),
    '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "cmake version 3.25.1"; exit 0; fi\necho "fake cmake: build failed" >&2\nexit 1\n',
    { mode: 0o755 },
  );
  // node-gyp stand-in: leaves a copy of the real addon where node-gyp would, and a marker.
  gypMarker = path.join(pkg.dir, 'node-gyp-ran');
  const real = path.join(pkg.dir, 'real-addon.node');
  pkg.addon('real-addon.node', OLD);
  fs.writeFileSync(
    path.join(bin, 'fake-node-gyp.js'),
    `const fs = require('fs'); fs.writeFileSync(${JSON.stringify(gypMarker)}, process.argv.slice(2).join(' '));\n` +
      `fs.mkdirSync('build/Release', { recursive: true }); fs.copyFileSync(${JSON.stringify(real)}, 'build/Release/lorakit.node');\n`,
  );
});
afterEach(() => pkg.remove());

const env = (extra: Record<string, string> = {}) =>
  cleanEnv({ PATH: `${bin}:${process.env.PATH}`, npm_config_node_gyp: path.join(bin, 'fake-node-gyp.js'), ...extra });

test('a prebuilt binary that loads: one line, no build', () => {
  pkg.addon(PREBUILT_REL, OLD);
  const r = runInstall(pkg.dir, env());
  expect(r.status).toBe(0);
  expect(r.out.trim().split('\n')).toHaveLength(1);
  expect(r.out).toContain(`using the prebuilt binary ${PREBUILT_REL}`);
  expect(fs.existsSync(path.join(pkg.dir, 'build'))).toBe(false);
});

test('an up-to-date local build is kept, also with LORAKIT_BUILD_FROM_SOURCE=1 and with no prebuilt binary', () => {
  pkg.addon(LOCAL_REL, NEW);
  for (const extra of [{}, { LORAKIT_BUILD_FROM_SOURCE: '1' }] as Record<string, string>[]) {
    const r = runInstall(pkg.dir, env(extra));
    expect(r.status).toBe(0);
    expect(r.out).toContain(`keeping ${LOCAL_REL}`);
    expect(r.out.trim().split('\n')).toHaveLength(1);
  }
  expect(fs.existsSync(gypMarker)).toBe(false);
});

test.each(['ON', 'on', 'On'])('LORAKIT_CUDA=%s: a failed CUDA build fails the install, with no CPU-only or node-gyp fallback', (mode) => {
  pkg.addon(PREBUILT_REL, OLD); // a prebuilt binary is no substitute for the CUDA build that was asked for
  const r = runInstall(pkg.dir, env({ LORAKIT_CUDA: mode }));
  expect(r.status).toBe(1);
  expect(r.out).toContain('building the native addon from source because LORAKIT_CUDA=ON');
  expect(r.out).toContain('running cmake-js rebuild (LORAKIT_CUDA=ON)');
  expect(r.out).toContain('the CUDA build failed (LORAKIT_CUDA=ON');
  expect(r.out).toContain('Not falling back');
  expect(r.out).not.toContain('LORAKIT_CUDA=OFF)');
  expect(fs.existsSync(gypMarker)).toBe(false);
});

test('LORAKIT_CUDA=ON with LORAKIT_BUILD=gyp, and an unknown LORAKIT_CUDA value, fail at once', () => {
  const gyp = runInstall(pkg.dir, env({ LORAKIT_CUDA: 'ON', LORAKIT_BUILD: 'gyp' }));
  expect(gyp.status).toBe(1);
  expect(gyp.out).toContain('LORAKIT_CUDA=ON needs the cmake-js build');
  const bad = runInstall(pkg.dir, env({ LORAKIT_CUDA: 'yes' }));
  expect(bad.status).toBe(1);
  expect(bad.out).toContain("LORAKIT_CUDA must be ON, OFF or auto, got 'yes'");
  expect(fs.existsSync(gypMarker)).toBe(false);
});

test('CUDA auto: a failed cmake build falls back loudly, and the stamp records the builder and the fallbacks', () => {
  pkg.addon(LOCAL_REL, NEW);
  pkg.touchSource(NEW + 10); // the local build is stale: a rebuild is due, and says why
  const r = runInstall(pkg.dir, env());
  expect(r.status).toBe(0);
  expect(r.out).toContain(`because no prebuilt binary in this copy of the package`);
  expect(r.out).toContain(`${LOCAL_REL} is older than native/cpu/gemm.cc`);
  expect(r.out).toContain('WARNING: the cmake build with CUDA auto failed');
  expect(r.out).toContain('falling back to node-gyp');
  expect(r.out).toMatch(/built build\/Release\/lorakit.node with node-gyp in \d+ s \(backends: cpu/);
  expect(fs.readFileSync(gypMarker, 'utf8')).toBe('rebuild');
  const stamp = JSON.parse(fs.readFileSync(path.join(pkg.dir, 'build', 'lorakit-build.json'), 'utf8'));
  expect(stamp).toMatchObject({ builder: 'node-gyp', cuda: 'auto', cudaCheckedFiles: [] });
  expect(stamp.backends).toContain('cpu');
  expect(stamp.fallbacks).toEqual(['cmake-js with CUDA auto failed; retried CPU-only', 'cmake-js failed; used node-gyp']);
  // The fresh build is now kept as it is, and LORAKIT_BUILD=cmake asks for the other builder.
  expect(runInstall(pkg.dir, env()).out).toContain('by node-gyp, backends cpu');
  const cm = runInstall(pkg.dir, env({ LORAKIT_BUILD: 'cmake' }));
  expect(cm.out).toContain(`${LOCAL_REL} is up to date but was built by node-gyp and LORAKIT_BUILD=cmake asks for cmake-js`);
  expect(cm.status).toBe(1);
});
