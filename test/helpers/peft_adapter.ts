/** Writes a golden case's W and factors as a base checkpoint and a peft-format adapter directory. */
import * as fs from 'fs';
import * as path from 'path';
import { writeSafetensors } from '../../lib';
import { GoldenCase } from './golden';

export interface CaseOnDisk {
  base: string;
  adapter: string;
  weightName: string;
}

export function writeCaseAsPeft(c: GoldenCase, dir: string, mod: string): CaseOnDisk {
  const meta = c.meta as { kind: string; r: number; lora_alpha: number; use_rslora?: boolean; use_dora?: boolean; fan_in_fan_out?: boolean };
  const raw = (n: string) => ({ dtype: 'F32', shape: c.file.entry(n).shape, bytes: c.file.bytes(n) });
  const base = path.join(dir, 'base.safetensors');
  const weightName = `blk.${mod}.weight`;
  writeSafetensors(base, { [weightName]: raw('W'), 'blk.norm.weight': { dtype: 'F32', shape: [2], bytes: new Uint8Array(8) } });
  const adapter = path.join(dir, 'adapter');
  fs.mkdirSync(adapter);
  const emb = meta.kind === 'embedding';
  const p = `base_model.model.blk.${mod}`;
  const t: Record<string, ReturnType<typeof raw>> = emb
    ? { [`${p}.lora_embedding_A`]: raw('A'), [`${p}.lora_embedding_B`]: raw('B') }
    : { [`${p}.lora_A.weight`]: raw('A'), [`${p}.lora_B.weight`]: raw('B') };
  if (meta.use_dora) t[`${p}.lora_magnitude_vector`] = raw('magnitude');
  writeSafetensors(path.join(adapter, 'adapter_model.safetensors'), t, { format: 'pt' });
  fs.writeFileSync(
    path.join(adapter, 'adapter_config.json'),
    JSON.stringify({ peft_type: 'LORA', r: meta.r, lora_alpha: meta.lora_alpha, use_rslora: meta.use_rslora ?? false, use_dora: meta.use_dora ?? false, fan_in_fan_out: meta.fan_in_fan_out ?? false, target_modules: [mod] }),
  );
  return { base, adapter, weightName };
}
