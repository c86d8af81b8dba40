// Where the native addon can come from, in the order it is tried. Plain CommonJS with no
// dependencies: the loader (lib/load_addon.ts) and the install script (scripts/install.js, which runs
// before dist/ exists in a clone) share it.
//   1. LORAKIT_BUILD_FROM_SOURCE=1: the local build only (build/Release/lorakit.node).
//   2. A local build newer than every source file (a clone's build, or `npm rebuild lorakit`).
//   3. The prebuilt binary for this platform: prebuilds/<platform>-<arch>/lorakit.napi.glibc.node
//      (prebuildify's layout; the napi and glibc tags are the ones node-gyp-build matches on).
//   4. A local build older than the sources.
'use strict';
const fs = require('fs');
const path = require('path');

const ADDON_FILE = 'lorakit.node';
const PREBUILT_FILE = 'lorakit.napi.glibc.node';
/** The platforms `npm pack` builds for (scripts/prebuild.js). */
const PREBUILT_PLATFORMS = ['linux-x64', 'linux-arm64'];
/** What a source build reads: a build older than any of these is stale. */
const SOURCE_ROOTS = ['native', 'CMakeLists.txt', 'binding.gyp'];
const SOURCE_EXT = /\.(cc|h|cu|cuh|c)$/;

function truthy(v) {
  return v === '1' || (typeof v === 'string' && v.toLowerCase() === 'true');
}

/** 'glibc' or 'musl' on Linux (the dynamic loader named in node's own executable), else null. */
function libc() {
  if (process.platform !== 'linux') return null;
  try {
    const fd = fs.openSync('/proc/self/exe', 'r');
    const head = Buffer.alloc(8192);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    fs.closeSync(fd);
    return head.subarray(0, n).includes('/ld-musl-') ? 'musl' : 'glibc';
  } catch {
    return 'glibc';
  }
}

function platformTag() {
  return `${process.platform}-${process.arch}`;
}

function prebuiltPath(root, tag = platformTag()) {
  return path.join(root, 'prebuilds', tag, PREBUILT_FILE);
}

function localBuildPath(root) {
  return path.join(root, 'build', 'Release', ADDON_FILE);
}

/** The most recently modified source file ({ file, mtimeMs }; mtimeMs 0 when there are none). */
function newestSource(root) {
  let best = { file: null, mtimeMs: 0 };
  const visit = (p) => {
    let st;
    try {
      st = fs.statSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(p)) visit(path.join(p, e));
    } else if ((p.endsWith('CMakeLists.txt') || p.endsWith('binding.gyp') || SOURCE_EXT.test(p)) && st.mtimeMs > best.mtimeMs) {
      best = { file: p, mtimeMs: st.mtimeMs };
    }
  };
  for (const r of SOURCE_ROOTS) visit(path.join(root, r));
  return best;
}

/** The local build: whether it exists and whether it is newer than every source file. */
function localBuild(root) {
  const file = localBuildPath(root);
  let st;
  try {
    st = fs.statSync(file);
  } catch {
    return { path: file, exists: false, upToDate: false, newest: null };
  }
  const newest = newestSource(root);
  return { path: file, exists: true, upToDate: st.mtimeMs >= newest.mtimeMs, mtimeMs: st.mtimeMs, newest };
}

/** The prebuilt binary for this machine, or why there is none ({ path, exists, reason }). */
function prebuilt(root) {
  const tag = platformTag();
  const file = prebuiltPath(root, tag);
  if (!PREBUILT_PLATFORMS.includes(tag))
    return { path: file, exists: false, reason: `no prebuilt binary for ${tag} (prebuilt: ${PREBUILT_PLATFORMS.join(', ')}, glibc)` };
  const lc = libc();
  if (lc !== 'glibc') return { path: file, exists: false, reason: `the prebuilt binaries need glibc; this node uses ${lc}` };
  if (!fs.existsSync(file)) return { path: file, exists: false, reason: 'no prebuilt binary in this copy of the package (a clone has none until npm pack)' };
  return { path: file, exists: true, reason: 'prebuilt binary for this platform' };
}

/**
 * The candidates in the order they are tried: [{ source: 'local-build' | 'prebuilt', path, exists, why }].
 * `why` says why the candidate has its place (or why it cannot be used, when exists is false).
 */
function candidates(root, env = process.env) {
  const local = localBuild(root);
  const localCand = (why) => ({ source: 'local-build', path: local.path, exists: local.exists, why: local.exists ? why : 'not built' });
  if (truthy(env.LORAKIT_BUILD_FROM_SOURCE)) return [localCand('LORAKIT_BUILD_FROM_SOURCE=1')];
  const pre = prebuilt(root);
  const preCand = { source: 'prebuilt', path: pre.path, exists: pre.exists, why: pre.reason };
  if (local.exists && local.upToDate) return [localCand('newer than every source file'), preCand];
  return [preCand, localCand(`older than ${local.newest && local.newest.file ? path.relative(root, local.newest.file) : 'the sources'}`)];
}

module.exports = {
  ADDON_FILE,
  PREBUILT_FILE,
  PREBUILT_PLATFORMS,
  truthy,
  libc,
  platformTag,
  prebuiltPath,
  localBuildPath,
  newestSource,
  localBuild,
  prebuilt,
  candidates,
};
