/**
 * Package-shaped temporary folders for the loader and install-script tests: dist/, package.json,
 * the install scripts, node_modules (a link), native/ with one source file, and optionally a
 * prebuilt binary and a local build (copies of the addon this test process loaded).
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backendInfo } from '../../lib';

export const ROOT = path.resolve(__dirname, '../..');
export const TAG = `${process.platform}-${process.arch}`;
export const PREBUILT_REL = path.join('prebuilds', TAG, 'lorakit.napi.glibc.node');
export const LOCAL_REL = path.join('build', 'Release', 'lorakit.node');

export interface PackageDir {
  dir: string;
  /** Writes a copy of the real addon (or `bytes`) at rel, with its mtime set to `mtime` (seconds). */
  addon(rel: string, mtime: number, bytes?: Buffer): void;
  /** Sets the source file's mtime (seconds). */
  touchSource(mtime: number): void;
  remove(): void;
}

export function makePackageDir(): PackageDir {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-pkg-'));
  fs.cpSync(path.join(ROOT, 'dist'), path.join(dir, 'dist'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  fs.mkdirSync(path.join(dir, 'scripts'));
  for (const f of ['addon-locate.js', 'install.js']) fs.copyFileSync(path.join(ROOT, 'scripts', f), path.join(dir, 'scripts', f));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  fs.mkdirSync(path.join(dir, 'native', 'cpu'), { recursive: true });
  const source = path.join(dir, 'native', 'cpu', 'gemm.cc');
  fs.writeFileSync(source, '// stand-in source\n');
  const real = backendInfo().addonPath;
  return {
    dir,
    addon(rel, mtime, bytes) {
      const file = path.join(dir, rel);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      if (bytes) fs.writeFileSync(file, bytes);
      else fs.copyFileSync(real, file);
      fs.utimesSync(file, mtime, mtime);
    },
    touchSource(mtime) {
      fs.utimesSync(source, mtime, mtime);
    },
    remove() {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Environment without the variables that steer the loader and the install script. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('LORAKIT_') || k === 'npm_config_node_gyp') delete env[k];
  return { ...env, ...extra };
}

export interface LoadResult {
  loaded?: { addonPath: string; loadedFrom: string; cpuPath: string };
  error?: { name: string; code: string; message: string };
}

/** Loads lorakit in a child node in `dir` and reports backendInfo() or the load error. */
export function loadIn(dir: string, env: Record<string, string> = {}): LoadResult {
  const script =
    "const l = require('./dist');" +
    'try { const i = l.backendInfo(); console.log(JSON.stringify({ loaded: { addonPath: i.addonPath, loadedFrom: i.loadedFrom, cpuPath: i.cpuPath } })); }' +
    'catch (e) { console.log(JSON.stringify({ error: { name: e.name, code: e.code, message: e.message } })); }';
  return JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: dir, encoding: 'utf8', env: cleanEnv(env) })) as LoadResult;
}

/** Runs scripts/install.js in `dir`; returns its exit status and output. */
export function runInstall(dir: string, env: NodeJS.ProcessEnv): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [path.join(dir, 'scripts', 'install.js')], { cwd: dir, encoding: 'utf8', env });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}
