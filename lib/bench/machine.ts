/** What the benchmark records about the machine: CPU model, the ISA flags that matter, core count. */
import * as fs from 'fs';
import * as os from 'os';

export interface MachineInfo {
  cpuModel: string;
  vendor: string;
  logicalCpus: number;
  /** The vector/matrix extensions present (from /proc/cpuinfo where available). */
  isa: string[];
  platform: string;
  /** Last-level cache size in bytes (Linux sysfs), null when unknown. */
  l3Bytes: number | null;
}

function l3Size(): number | null {
  try {
    const dir = '/sys/devices/system/cpu/cpu0/cache';
    let best: number | null = null;
    for (const idx of fs.readdirSync(dir)) {
      if (!idx.startsWith('index')) continue;
      const m = /^(\d+)([KMG]?)/.exec(fs.readFileSync(`${dir}/${idx}/size`, 'utf8').trim());
      if (!m) continue;
      const v = Number(m[1]) * (m[2] === 'K' ? 1024 : m[2] === 'M' ? 1 << 20 : m[2] === 'G' ? 1 << 30 : 1);
      best = best === null ? v : Math.max(best, v);
    }
    return best;
  } catch {
    return null;
  }
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
  return {
    cpuModel: cpus[0]?.model?.trim() || 'unknown',
    vendor,
    logicalCpus: cpus.length,
    isa: INTERESTING.filter((f) => flags.includes(f)),
    platform: `${os.platform()}-${os.arch()}`,
    l3Bytes: l3Size(),
  };
}

/**
 * The OpenBLAS kernel family for this CPU. Debian's OpenBLAS 0.3.21 mis-detects recent cores (it
 * takes Sapphire Rapids for a Prescott and runs ~10x slower), so the reference run names it.
 */
export function openblasCoretype(m: MachineInfo): string | null {
  if (m.isa.includes('amx_bf16')) return 'SAPPHIRERAPIDS';
  if (m.isa.includes('avx512_bf16')) return 'COOPERLAKE';
  if (m.isa.includes('avx512f')) return 'SKYLAKEX';
  if (m.isa.includes('avx2') && m.vendor === 'AuthenticAMD') return 'ZEN';
  if (m.isa.includes('avx2')) return 'HASWELL';
  return null;
}
