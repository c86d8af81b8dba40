/**
 * The benchmark's API and CLI as software (shape of the results, the file written, option
 * errors). Speed is never asserted here: the bench itself measures ratios in one run.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { BenchRow, bench, formatBenchTable } from '../lib';
import { evaluateTargets } from '../lib/bench';
import { run as runCli } from '../lib/cli/bench';

describe('bench()', () => {
  test('a tiny grid gives one row per op/shape, a table, and a JSON file with date, CPU and command', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-bench-test-'));
    try {
      const res = await bench({
        d: [64], r: [4], n: [1, 9], dtypes: ['f32', 'bf16'], minTime: 0.005, reference: false,
        outDir: dir, peakBufferBytes: 8 << 20, command: 'jest tiny grid',
      });
      // per dtype: gemm ×2 n, forward ×2 n, fwdbwd ×2 n, merge ×1 r, exact + swap ×1 r
      expect(res.rows).toHaveLength(2 * (2 + 2 + 2 + 1 + 2));
      for (const r of res.rows) {
        expect(r.ms).toBeGreaterThan(0);
        expect(r.medianMs).toBeGreaterThanOrEqual(r.ms);
        expect(r.peakShare).toBeGreaterThan(0);
      }
      const fwd = res.rows.filter((r) => r.op === 'forward');
      expect(fwd.every((r) => r.vsBase !== null && r.vsBase > 0)).toBe(true);
      expect(res.rows.filter((r) => r.op === 'merge').every((r) => r.peakKind === 'copy' && r.gbs! > 0)).toBe(true);
      expect(res.peaks.fmaGflops).toBeGreaterThan(0);
      expect(res.peaks.copyGBs).toBeGreaterThan(0);
      // bf16 GEMM rows are measured against the path's bf16 unit (AMX tiles, vdpbf16ps) or else the FMA peak
      expect(res.peaks.bf16DotGflops > 0).toBe(res.cpuPath === 'avx512bf16');
      const bf16Kind = res.peaks.amxGflops > 0 ? 'amx' : res.peaks.bf16DotGflops > 0 ? 'dpbf16' : 'fma';
      const bf16Gemm = res.rows.filter((r) => r.dtype === 'bf16' && r.op === 'gemm' && r.n! > 1);
      expect(bf16Gemm.length).toBe(1);
      expect(bf16Gemm.every((r) => r.peakKind === bf16Kind)).toBe(true);
      // exact: exact merge+unmerge against peft's; swap: switchMerged against exact unmerge + merge
      for (const op of ['exact', 'swap']) expect(res.rows.filter((r) => r.op === op).every((r) => r.vsReference! > 0 && r.refWhat !== null)).toBe(true);
      expect(res.targets.length).toBe(6);
      expect(res.file).not.toBeNull();
      const saved = JSON.parse(fs.readFileSync(res.file!, 'utf8'));
      expect(saved.command).toBe('jest tiny grid');
      expect(saved.machine.cpuModel).toBe(res.machine.cpuModel);
      expect(Date.parse(saved.date)).not.toBeNaN();
      expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp'))).toEqual([]);
      const table = formatBenchTable(res);
      expect(table).toContain('forward');
      expect(table).toContain('targets:');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the AMX target is n/a on the avx512bf16 path and names its vdpbf16ps share', () => {
    const row = (peakKind: string, peakShare: number): BenchRow => ({
      op: 'gemm', dtype: 'bf16', d: 4096, r: null, n: 512, ms: 1, medianMs: 1, gflops: 1, gbs: null, peakKind, peakShare,
      vsReference: null, refMs: null, refWhat: null, vsBase: null, wInCache: false,
    });
    const amx = evaluateTargets([row('amx', 0.6)]).find((t) => t.target.includes('AMX'))!;
    expect(amx.met).toBe(true);
    const dp = evaluateTargets([row('dpbf16', 0.9)]).find((t) => t.target.includes('AMX'))!;
    expect(dp.met).toBeNull();
    expect(dp.measured).toContain('avx512bf16: 90.0% of the vdpbf16ps peak');
  });

  test('bad options are typed errors naming the option', async () => {
    await expect(bench({ d: [0], outDir: null })).rejects.toThrow(/d: expected/);
    await expect(bench({ dtypes: ['f64' as never], outDir: null })).rejects.toThrow(/dtypes/);
    await expect(bench({ d: [64], r: [128], outDir: null })).rejects.toThrow(/r: 128 exceeds d = 64/);
    await expect(bench({ minTime: -1, outDir: null })).rejects.toMatchObject({ name: 'LoraRangeError' });
  });
});

describe('lorakit bench CLI', () => {
  test('--help exits 0, an unknown option exits 2', async () => {
    const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
    const err = jest.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      expect(await runCli(['--help'])).toBe(0);
      expect(await runCli(['--bogus'])).toBe(2);
      expect(err.mock.calls.join(' ')).toContain("unknown option '--bogus'");
    } finally {
      log.mockRestore();
      err.mockRestore();
    }
  });
});
