/** Argument checks shared by the public API. Each throws a typed error naming the argument. */
import { LoraRangeError, LoraTypeError } from './errors';

export function checkShape(shape: unknown, name: string): number[] {
  if (!Array.isArray(shape)) throw new LoraTypeError(`${name}: expected an array of non-negative integers`);
  if (shape.length > 16) throw new LoraRangeError(`${name}: at most 16 dimensions are supported, got ${shape.length}`);
  let numel = 1;
  shape.forEach((d, i) => {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
      throw new LoraRangeError(`${name}[${i}]: expected a non-negative integer, got ${String(d)}`);
    numel *= d;
  });
  if (!Number.isSafeInteger(numel) || numel > 2 ** 40)
    throw new LoraRangeError(`${name}: [${shape.join(', ')}] has too many elements`);
  return shape.slice();
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function checkFinite(v: unknown, name: string): number {
  if (typeof v !== 'number') throw new LoraTypeError(`${name}: expected a number, got ${typeof v}`);
  if (!Number.isFinite(v)) throw new LoraRangeError(`${name}: expected a finite number, got ${v}`);
  return v;
}

/** Largest finite f32: kernels compute in f32, so a larger factor would silently become infinite. */
export const F32_MAX = 3.4028234663852886e38;

/** A finite scale factor that stays finite in f32. */
export function checkScale(v: unknown, name: string): number {
  checkFinite(v, name);
  if (Math.abs(v as number) > F32_MAX) throw new LoraRangeError(`${name}: ${v} is outside the f32 range (|x| <= ${F32_MAX})`);
  return v as number;
}

export function checkInt(v: unknown, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number') throw new LoraTypeError(`${name}: expected an integer, got ${typeof v}`);
  if (!Number.isInteger(v) || v < min || v > max)
    throw new LoraRangeError(`${name}: expected an integer in [${min}, ${max}], got ${v}`);
  return v;
}

export function checkBool(v: unknown, name: string): boolean {
  if (typeof v !== 'boolean') throw new LoraTypeError(`${name}: expected a boolean, got ${typeof v}`);
  return v;
}

export function checkString(v: unknown, name: string): string {
  if (typeof v !== 'string' || v.length === 0) throw new LoraTypeError(`${name}: expected a non-empty string`);
  return v;
}

/**
 * Rejects option keys the function does not know (catches typos such as `lora_alpha`); `hints`
 * maps a likely wrong key to what to write instead.
 */
export function checkOptions(opts: unknown, allowed: readonly string[], name: string, hints: Readonly<Record<string, string>> = {}): Record<string, unknown> {
  if (opts === undefined) return {};
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new LoraTypeError(`${name}: expected an options object`);
  for (const k of Object.keys(opts)) {
    if (!allowed.includes(k)) {
      const hint = Object.hasOwn(hints, k) ? `: ${hints[k]}` : '';
      throw new LoraTypeError(`${name}: unknown option '${k}'${hint} (known: ${allowed.join(', ')})`);
    }
  }
  return opts as Record<string, unknown>;
}
