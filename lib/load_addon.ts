/**
 * Loads the native addon: LORAKIT_NATIVE_PATH if set (the sanitizer build of `npm run test:asan`),
 * else the candidates of scripts/addon-locate.js in order (an up-to-date local build, the prebuilt
 * binary for this platform, an older local build; LORAKIT_BUILD_FROM_SOURCE=1 allows the local build
 * only). A candidate that is missing or fails to load is skipped; when none loads, NativeLoadError
 * lists each one with its reason. Which binary was loaded is reported by backendInfo().
 */
import * as path from 'path';
import { NativeLoadError } from './errors';

/** Where the loaded addon came from. */
export type AddonSource = 'prebuilt' | 'local-build' | 'LORAKIT_NATIVE_PATH';

export interface LoadedAddonInfo {
  /** Absolute path of the .node file that was loaded. */
  addonPath: string;
  /** 'prebuilt' (prebuilds/ in the package), 'local-build' (build/Release) or 'LORAKIT_NATIVE_PATH'. */
  loadedFrom: AddonSource;
}

interface Candidate {
  source: 'prebuilt' | 'local-build';
  path: string;
  exists: boolean;
  why: string;
}

interface AddonLocator {
  candidates(root: string, env: NodeJS.ProcessEnv): Candidate[];
}

const PACKAGE_ROOT = path.join(__dirname, '..');

const HOW_TO_BUILD =
  'lorakit: the native addon could not be loaded.\n' +
  'Prebuilt binaries ship for linux-x64 and linux-arm64 (glibc); elsewhere, or to build from source:\n' +
  '  npm rebuild lorakit   (LORAKIT_BUILD_FROM_SOURCE=1 to prefer the source build; LORAKIT_CUDA=ON for CUDA)\n' +
  '(needs a C++17 compiler, make and python3, or cmake >= 3.18; CUDA is optional).\n' +
  "npm 11.16+ warns about, and npm 12 blocks, install scripts of dependencies: approve lorakit's with\n" +
  '  npm install-scripts approve lorakit   (or, on npm versions that name it so: npm approve-scripts lorakit)\n' +
  'and then run  npm rebuild lorakit.\n' +
  'From a clone of the repository: npm install (or: npm run build:native).';

let loaded: LoadedAddonInfo | undefined;

function requireAddon<T>(file: string): T {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(file) as T;
}

function describe(file: string): string {
  const rel = path.relative(PACKAGE_ROOT, file);
  return rel.startsWith('..') ? file : rel;
}

/** Loads the addon (see the file comment); throws NativeLoadError listing what was tried. */
export function loadAddon<T>(env: NodeJS.ProcessEnv = process.env): T {
  const override = env.LORAKIT_NATIVE_PATH;
  if (override) {
    const file = path.resolve(override);
    try {
      const binding = requireAddon<T>(file);
      loaded = { addonPath: file, loadedFrom: 'LORAKIT_NATIVE_PATH' };
      return binding;
    } catch (cause) {
      throw new NativeLoadError(`${HOW_TO_BUILD}\nTried: LORAKIT_NATIVE_PATH=${file}: ${(cause as Error).message}`, { cause });
    }
  }
  let locator: AddonLocator;
  try {
    locator = requireAddon<AddonLocator>(path.join(PACKAGE_ROOT, 'scripts', 'addon-locate.js'));
  } catch (cause) {
    throw new NativeLoadError(`${HOW_TO_BUILD}\nThe package is incomplete: ${(cause as Error).message}`, { cause });
  }
  const tried: string[] = [];
  let lastError: unknown;
  for (const c of locator.candidates(PACKAGE_ROOT, env)) {
    if (!c.exists) {
      tried.push(`${c.source} ${describe(c.path)}: ${c.why}`);
      continue;
    }
    try {
      const binding = requireAddon<T>(c.path);
      loaded = { addonPath: c.path, loadedFrom: c.source };
      return binding;
    } catch (cause) {
      lastError = cause;
      tried.push(`${c.source} ${describe(c.path)} (${c.why}): ${(cause as Error).message}`);
    }
  }
  throw new NativeLoadError(`${HOW_TO_BUILD}\nTried:\n  ${tried.join('\n  ')}`, lastError === undefined ? undefined : { cause: lastError });
}

/** The loaded addon's file and origin; undefined before the first load. */
export function loadedAddon(): LoadedAddonInfo | undefined {
  return loaded;
}
