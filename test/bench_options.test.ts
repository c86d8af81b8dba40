/**
 * bench()'s option vocabulary (unknown keys refused with the API's name for a CLI flag, nothing
 * written unless outDir is given), the CLI's flags mapping onto it, and the last-level cache
 * size from sysfs or getconf, and the OpenBLAS kernel families timed for the reference.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { bench } from '../lib';
import { lastLevelCache, machineInfo, openblasCoretypes } from '../lib/bench/machine';
import { optionsFromArgs } from '../lib/cli/bench';

const tiny = { d: [64], r: [4], n: [1], ops: ['merge' as const], dtypes: ['f32' as const], minTime: 0.005, reference: false, peakBufferBytes: 8 << 20 };

describe('bench() options', () => {
  test('unknown keys are refused, naming the API key for a CLI flag', async () => {
    await expect(bench({ op: ['gemm'] } as never)).rejects.toMatchObject({ name: 'LoraTypeError', message: expect.stringMatching(/opts: unknown option 'op': the API's key is 'ops'/) });
    await expect(bench({ dtype: ['f32'] } as never)).rejects.toThrow(/unknown option 'dtype': the API's key is 'dtypes'/);
    await expect(bench({ noSave: true } as never)).rejects.toThrow(/writes no file unless given outDir/);
    await expect(bench({ opz: ['gemm'] } as never)).rejects.toThrow(/unknown option 'opz' \(known: d, r, n, dtypes, ops/);
  });

  test('option types are checked before anything runs', async () => {
    await expect(bench({ ...tiny, threads: 0 })).rejects.toThrow(/threads: expected an integer/);
    await expect(bench({ ...tiny, reference: 'no' as never })).rejects.toThrow(/reference: expected a boolean/);
    await expect(bench({ ...tiny, progress: 1 as never })).rejects.toThrow(/progress: expected a function/);
    await expect(bench({ ...tiny, outDir: '' })).rejects.toThrow(/outDir: expected a non-empty string/);
    await expect(bench({ ...tiny, ops: ['gem' as never] })).rejects.toThrow(/ops: expected a non-empty list/);
  });

  test('the API writes no file unless given outDir', async () => {
    const cwd = process.cwd();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-bench-cwd-'));
    try {
      process.chdir(dir);
      const res = await bench(tiny);
      expect(res.file).toBeNull();
      expect(res.rows).toHaveLength(1);
      expect(fs.readdirSync(dir)).toEqual([]);
      const saved = await bench({ ...tiny, outDir: 'out' });
      expect(path.dirname(saved.file!)).toBe(path.join(fs.realpathSync(dir), 'out'));
      expect(fs.readdirSync(path.join(dir, 'out'))).toHaveLength(1);
    } finally {
      process.chdir(cwd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('lorakit bench flags', () => {
  test('--ops/--dtypes (and their aliases --op/--dtype) are the API keys; the CLI saves to bench/results unless --no-save', () => {
    const a = optionsFromArgs(['--ops', 'gemm,merge', '--dtypes', 'f32', '--min-time', '0.5']);
    const b = optionsFromArgs(['--op', 'gemm,merge', '--dtype', 'f32', '--min-time', '0.5']);
    if (typeof a === 'number' || typeof b === 'number') throw new Error('expected options');
    expect(a.opts).toMatchObject({ ops: ['gemm', 'merge'], dtypes: ['f32'], minTime: 0.5, outDir: path.join('bench', 'results') });
    expect({ ...b.opts, command: '' }).toEqual({ ...a.opts, command: '' });
    const c = optionsFromArgs(['--no-save', '--out', 'x']);
    const d = optionsFromArgs(['--out', 'x', '--no-save']);
    expect(typeof c !== 'number' && c.opts.outDir).toBe('x');
    expect(typeof d !== 'number' && d.opts.outDir).toBeNull();
  });
});

describe('last-level cache size', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-llc-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const index = (i: number, level: number, type: string, size: string) => {
    fs.mkdirSync(path.join(dir, `index${i}`));
    for (const [f, v] of [['level', level], ['type', type], ['size', size]]) fs.writeFileSync(path.join(dir, `index${i}`, String(f)), `${v}\n`);
  };

  test('sysfs: the highest-level data or unified cache', () => {
    index(0, 1, 'Data', '48K');
    index(1, 1, 'Instruction', '32K');
    index(2, 2, 'Unified', '1024K');
    index(3, 3, 'Unified', '32768K');
    expect(lastLevelCache(dir, () => '999\n')).toEqual({ bytes: 32 << 20, source: 'sysfs' });
  });

  test('no sysfs listing: getconf LEVEL3_CACHE_SIZE; nothing known: null', () => {
    const none = path.join(dir, 'missing');
    expect(lastLevelCache(none, () => '532676608\n')).toEqual({ bytes: 532676608, source: 'getconf' });
    expect(lastLevelCache(dir, () => '33554432\n')).toEqual({ bytes: 33554432, source: 'getconf' }); // an empty listing too
    expect(lastLevelCache(none, () => '0\n')).toEqual({ bytes: null, source: null });
    expect(lastLevelCache(none, () => 'undefined\n')).toEqual({ bytes: null, source: null });
    expect(lastLevelCache(none, () => null)).toEqual({ bytes: null, source: null });
  });

  test('this machine: known whenever sysfs or getconf knows it', () => {
    let getconf = 0;
    try {
      getconf = Number(execFileSync('getconf', ['LEVEL3_CACHE_SIZE'], { encoding: 'utf8' }).trim()) || 0;
    } catch {
      // no getconf
    }
    const sysfs = fs.existsSync('/sys/devices/system/cpu/cpu0/cache/index0');
    const m = machineInfo();
    if (sysfs || getconf > 0) expect(m.l3Bytes).toBeGreaterThan(0);
    if (!sysfs && getconf > 0) expect(m).toMatchObject({ l3Bytes: getconf, l3Source: 'getconf' });
  });
});

describe("OpenBLAS kernel families a CPU can run (the reference times them all and keeps the fastest)", () => {
  const m = (isa: string[], vendor = 'GenuineIntel') => ({ ...machineInfo(), isa, vendor });
  test('every family the ISA allows, the widest first; AMD tries ZEN before HASWELL', () => {
    expect(openblasCoretypes(m(['avx2', 'fma', 'avx512f', 'avx512vl', 'avx512_bf16', 'amx_tile', 'amx_bf16']))).toEqual(
      ['SAPPHIRERAPIDS', 'COOPERLAKE', 'SKYLAKEX', 'HASWELL', 'ZEN']);
    expect(openblasCoretypes(m(['avx2', 'fma', 'avx512f', 'avx512vl', 'avx512_bf16'], 'AuthenticAMD'))).toEqual(
      ['COOPERLAKE', 'SKYLAKEX', 'ZEN', 'HASWELL']);
    expect(openblasCoretypes(m(['avx2', 'fma'], 'AuthenticAMD'))).toEqual(['ZEN', 'HASWELL']);
    expect(openblasCoretypes(m(['asimd']))).toEqual([]);
  });
});
