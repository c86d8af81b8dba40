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
