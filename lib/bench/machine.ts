/** What the benchmark records about the machine: CPU model, the ISA flags that matter, core count. */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export interface MachineInfo {
  cpuModel: string;
  vendor: string;
  logicalCpus: number;
  /** The vector/matrix extensions present (from /proc/cpuinfo where available). */
  isa: string[];
  platform: string;
  /** Last-level cache size in bytes, null when unknown. */
  l3Bytes: number | null;
  /** Where l3Bytes came from: Linux sysfs, or `getconf LEVEL3_CACHE_SIZE`. */
  l3Source: 'sysfs' | 'getconf' | null;
}

/** A sysfs cache size ('32768K', '32M', '1024'), in bytes; null when unreadable. */
function parseCacheSize(text: string): number | null {
  const m = /^(\d+)\s*([KMG]?)/i.exec(text.trim());
  if (!m) return null;
  const unit = m[2].toUpperCase();
  return Number(m[1]) * (unit === 'K' ? 1024 : unit === 'M' ? 1 << 20 : unit === 'G' ? 1 << 30 : 1);
}

function getconfL3(): string | null {
  try {
    return execFileSync('getconf', ['LEVEL3_CACHE_SIZE'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 2000 });
  } catch {
    return null;
  }
}

/**
 * The last-level cache's size: the highest-level data or unified cache that Linux lists under
 * sysfs (cpu0/cache/index*: level, type, size), else glibc's `getconf LEVEL3_CACHE_SIZE` (which
 * asks the CPU itself, and so also works where sysfs hides the cache, as in some containers).
 */
export function lastLevelCache(
  sysfsDir = '/sys/devices/system/cpu/cpu0/cache',
  getconf: () => string | null = getconfL3,
): { bytes: number | null; source: 'sysfs' | 'getconf' | null } {
  try {
    let best: { level: number; bytes: number } | null = null;
    for (const idx of fs.readdirSync(sysfsDir)) {
      if (!/^index\d+$/.test(idx)) continue;
      const read = (f: string) => fs.readFileSync(path.join(sysfsDir, idx, f), 'utf8').trim();
      const type = fs.existsSync(path.join(sysfsDir, idx, 'type')) ? read('type') : 'Unified';
      if (type === 'Instruction') continue;
      const level = Number(read('level'));
      const bytes = parseCacheSize(read('size'));
      if (!Number.isInteger(level) || bytes === null || bytes === 0) continue;
      if (best === null || level > best.level || (level === best.level && bytes > best.bytes)) best = { level, bytes };
    }
    if (best) return { bytes: best.bytes, source: 'sysfs' };
  } catch {
    // no sysfs cache listing (not Linux, or hidden): ask getconf
  }
  const text = getconf();
  const bytes = text === null ? null : parseCacheSize(text);
  return bytes ? { bytes, source: 'getconf' } : { bytes: null, source: null };
}

const INTERESTING = ['avx2', 'fma', 'f16c', 'avx512f', 'avx512vl', 'avx512_bf16', 'amx_tile', 'amx_bf16', 'asimd', 'sve'];

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  let flags: string[] = [];
  let vendor = '';
  try {
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const fl = /^(flags|Features)\s*:\s*(.*)$/m.exec(text);
    if (fl) flags = fl[2].split(/\s+/);
    const v = /^vendor_id\s*:\s*(.*)$/m.exec(text);
    if (v) vendor = v[1].trim();
  } catch {
    // not Linux: flags unknown
  }
  const llc = lastLevelCache();
  return {
    cpuModel: cpus[0]?.model?.trim() || 'unknown',
    vendor,
    logicalCpus: cpus.length,
    isa: INTERESTING.filter((f) => flags.includes(f)),
    platform: `${os.platform()}-${os.arch()}`,
    l3Bytes: llc.bytes,
    l3Source: llc.source,
  };
}

/**
 * The OpenBLAS kernel families this CPU can run, the widest ISA first. Debian's OpenBLAS 0.3.21
 * mis-detects recent cores (it takes Sapphire Rapids for a Prescott and runs ~10x slower), so the
 * reference run names one; the widest is not always the fastest (on Zen 4, whose AVX-512 units are
 * 256 bits wide, the Haswell kernel ran the f32 GEMM 7% faster than Cooperlake's), so the benchmark
 * times them and keeps the fastest (openblas.ts fastestCoretype).
 */
export function openblasCoretypes(m: MachineInfo): string[] {
  const out: string[] = [];
  if (m.isa.includes('amx_bf16')) out.push('SAPPHIRERAPIDS');
  if (m.isa.includes('avx512_bf16')) out.push('COOPERLAKE');
  if (m.isa.includes('avx512f')) out.push('SKYLAKEX');
  if (m.isa.includes('avx2')) out.push(...(m.vendor === 'AuthenticAMD' ? ['ZEN', 'HASWELL'] : ['HASWELL', 'ZEN']));
  return out;
}
