/**
 * The loader's order (lib/load_addon.ts, scripts/addon-locate.js) in package-shaped folders: an
 * up-to-date local build, then the prebuilt binary, then an older local build; LORAKIT_BUILD_FROM_SOURCE=1
 * takes the local build only; backendInfo() names the binary that was loaded; a failure lists every
 * candidate with its reason.
 */
import * as path from 'path';
import { backendInfo } from '../lib';
import { LOCAL_REL, PREBUILT_REL, PackageDir, TAG, loadIn, makePackageDir } from './helpers/package_dir';

const OLD = 500_000_000; // 1985: npm's timestamp for every file of an installed package
const NEW = 1_700_000_000;

let pkg: PackageDir;
beforeEach(() => {
  pkg = makePackageDir();
  pkg.touchSource(OLD);
});
afterEach(() => pkg.remove());

test('this process reports the binary it loaded', () => {
  const info = backendInfo();
  expect(['prebuilt', 'local-build', 'LORAKIT_NATIVE_PATH']).toContain(info.loadedFrom);
  expect(path.isAbsolute(info.addonPath)).toBe(true);
});

test('an installed package with no local build loads the prebuilt binary', () => {
  pkg.addon(PREBUILT_REL, OLD);
  const r = loadIn(pkg.dir);
  expect(r.loaded?.loadedFrom).toBe('prebuilt');
  expect(r.loaded?.addonPath).toBe(path.join(pkg.dir, PREBUILT_REL));
});

test('a local build newer than the sources wins over the prebuilt binary (npm rebuild, a clone)', () => {
  pkg.addon(PREBUILT_REL, OLD);
  pkg.addon(LOCAL_REL, NEW);
  expect(loadIn(pkg.dir).loaded).toMatchObject({ loadedFrom: 'local-build', addonPath: path.join(pkg.dir, LOCAL_REL) });
});

test('a local build older than a source file loses to the prebuilt binary, and is the fallback', () => {
  pkg.addon(PREBUILT_REL, OLD);
  pkg.addon(LOCAL_REL, NEW);
  pkg.touchSource(NEW + 10);
  expect(loadIn(pkg.dir).loaded?.loadedFrom).toBe('prebuilt');
  pkg.addon(PREBUILT_REL, OLD, Buffer.from('not an ELF file'));
  expect(loadIn(pkg.dir).loaded?.loadedFrom).toBe('local-build');
});

test('LORAKIT_BUILD_FROM_SOURCE=1 takes the local build only', () => {
  pkg.addon(PREBUILT_REL, OLD);
  const r = loadIn(pkg.dir, { LORAKIT_BUILD_FROM_SOURCE: '1' });
  expect(r.error?.name).toBe('NativeLoadError');
  expect(r.error?.code).toBe('LORAKIT_NATIVE_LOAD');
  expect(r.error?.message).toContain(`local-build ${LOCAL_REL}: not built`);
  expect(r.error?.message).not.toContain('prebuilt prebuilds');
  pkg.addon(LOCAL_REL, OLD - 10); // older than the sources, still the one asked for
  expect(loadIn(pkg.dir, { LORAKIT_BUILD_FROM_SOURCE: '1' }).loaded?.loadedFrom).toBe('local-build');
});

test('when nothing loads, NativeLoadError lists each candidate with its reason and how to build', () => {
  pkg.addon(PREBUILT_REL, OLD, Buffer.from('not an ELF file'));
  const r = loadIn(pkg.dir);
  expect(r.error?.name).toBe('NativeLoadError');
  const msg = r.error?.message ?? '';
  expect(msg).toContain(`prebuilt ${PREBUILT_REL} (prebuilt binary for this platform): `);
  expect(msg).toMatch(/invalid ELF header|file too short/);
  expect(msg).toContain(`local-build ${LOCAL_REL}: not built`);
  expect(msg).toContain('npm rebuild lorakit');
  expect(msg).toContain('npm install-scripts approve lorakit');
  expect(msg).toMatch(/C\+\+17 compiler/);
  expect(msg).toContain('linux-x64 and linux-arm64');
});

test(`the prebuilt binary's folder is named for this platform (${TAG})`, () => {
  pkg.addon(path.join('prebuilds', TAG === 'linux-x64' ? 'linux-arm64' : 'linux-x64', 'lorakit.napi.glibc.node'), OLD);
  const r = loadIn(pkg.dir);
  expect(r.error?.message).toContain(`prebuilt ${PREBUILT_REL}: no prebuilt binary in this copy of the package`);
});
