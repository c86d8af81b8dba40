/** Access to ../shared/golden (cases made by the real peft 0.21) and comparison helpers. */
import * as fs from 'fs';
import * as path from 'path';
import { SafetensorsFile } from '../../lib/io/safetensors';

/** LORAKIT_GOLDEN, else the first shared/golden beside the checkout or one of its ancestors. */
function findGolden(): string {
  if (process.env.LORAKIT_GOLDEN) return process.env.LORAKIT_GOLDEN;
  let dir = path.resolve(__dirname, '../..');
  for (;;) {
    const candidate = path.join(path.dirname(dir), 'shared', 'golden');
    if (fs.existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) return path.resolve(__dirname, '../../../shared/golden');
    dir = path.dirname(dir);
  }
}

export const GOLDEN_DIR = findGolden();

export function goldenExists(): boolean {
  return fs.existsSync(path.join(GOLDEN_DIR, 'linear_basic.safetensors'));
}

export interface GoldenCase {
  file: SafetensorsFile;
  meta: Record<string, unknown>;
  f32(name: string): Float32Array;
}

export function loadCase(name: string): GoldenCase {
  const p = path.join(GOLDEN_DIR, `${name}.safetensors`);
  if (!fs.existsSync(p)) throw new Error(`golden case missing: ${p} (set LORAKIT_GOLDEN to the golden directory)`);
  const file = SafetensorsFile.read(p);
  const meta = JSON.parse(file.metadata.case ?? '{}') as Record<string, unknown>;
  return { file, meta, f32: (n) => file.float32(n) };
}

/** ‖a − b‖ / ‖b‖ in float64. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string): void {
  const e = relErr(actual, expected);
  if (!(e <= tol)) throw new Error(`${what}: relative error ${e.toExponential(3)} exceeds ${tol}`);
}
