/**
 * Fuzz targets for the file readers: safetensors headers (in memory and through the positioned
 * reader) and adapter_config.json. Corrupt inputs must give typed errors; whatever parses must be
 * self-consistent (offsets inside the file, sizes matching shapes, no overlaps), so no read can go
 * past the file and memory stays bounded by the file size.
 */
import fc from 'fast-check';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { SafetensorsFile, SafetensorsReader, parseHeader } from '../../lib';
import { fromPeftJson, resolveConfig } from '../../lib/model/config';
import { isTyped, tally } from './fuzz_common';

const SIZES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };
const DTYPES = Object.keys(SIZES);

const tensorArb = fc.record({
  dtype: fc.constantFrom(...DTYPES),
  shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }),
});

const CORRUPTIONS = [null, null, null, 'truncate', 'lenHuge', 'lenPastEnd', 'lenShort', 'lenZero', 'offsetPastEnd', 'offsetReversed',
  'offsetNegative', 'offsetFraction', 'offsetString', 'overlap', 'dtypeSize', 'dtypeUnknown', 'shapeNegative', 'shapeHuge', 'shapeNotArray',
  'entryNotObject', 'metadataNumber', 'jsonGarbage', 'jsonArray', 'byteFlip', 'randomBytes', 'trailingGarbage'] as const;

const headerCase = fc.record({
  tensors: fc.array(tensorArb, { maxLength: 5 }),
  metadata: fc.dictionary(fc.string({ maxLength: 6 }), fc.string({ maxLength: 6 }), { maxKeys: 3 }),
  corruption: fc.constantFrom(...CORRUPTIONS),
  pick: fc.nat(),
  pos: fc.double({ min: 0, max: 1, noNaN: true }),
  garbage: fc.uint8Array({ maxLength: 64 }),
  unknownDtype: fc.constantFrom('F8', 'constructor', '__proto__', 'toString', 'f32', ''),
});

interface Built {
  buf: Buffer;
  specs: Map<string, { dtype: string; shape: number[]; begin: number; end: number }>;
}

type HeaderCase = typeof headerCase extends fc.Arbitrary<infer T> ? T : never;

function build(c: HeaderCase): { buf: Buffer; valid: boolean; built: Built } {
  const specs: Built['specs'] = new Map();
  const json: Record<string, unknown> = {};
  if (Object.keys(c.metadata).length > 0) json.__metadata__ = { ...c.metadata };
  let off = 0;
  c.tensors.forEach((t, i) => {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * SIZES[t.dtype];
    const name = `t${i}.weight`;
    json[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [off, off + bytes] };
    specs.set(name, { dtype: t.dtype, shape: t.shape, begin: off, end: off + bytes });
    off += bytes;
  });
  const names = [...specs.keys()];
  const target = names.length > 0 ? (json[names[c.pick % names.length]] as Record<string, unknown>) : null;
  const k = c.corruption;
  let valid = k === null;
  const entryEdit = (fn: (e: Record<string, unknown>) => void) => {
    if (target) fn(target);
    else valid = true; // nothing to corrupt: the file stays valid
  };
  if (k === 'offsetPastEnd') entryEdit((e) => ((e.data_offsets as number[])[1] = off + 1 + c.pick % 7));
  if (k === 'offsetReversed')
    entryEdit((e) => {
      const o = e.data_offsets as number[];
      if (o[0] === o[1]) valid = true; // an empty range reads the same both ways
      o.reverse();
    });
  if (k === 'offsetNegative') entryEdit((e) => ((e.data_offsets as number[])[0] = -1));
  if (k === 'offsetFraction') entryEdit((e) => ((e.data_offsets as number[])[1] += 0.5));
  if (k === 'offsetString') entryEdit((e) => (e.data_offsets = ['0', '4']));
  if (k === 'dtypeSize')
    entryEdit((e) => {
      const s = SIZES[e.dtype as string];
      e.dtype = DTYPES.find((d) => SIZES[d] !== s)!;
      const [b, en] = e.data_offsets as number[];
      if (b === en) valid = true; // zero elements: any dtype fits
    });
  if (k === 'dtypeUnknown') entryEdit((e) => (e.dtype = c.unknownDtype));
  if (k === 'shapeNegative') entryEdit((e) => (e.shape = [-1, ...(e.shape as number[])]));
  if (k === 'shapeHuge') entryEdit((e) => (e.shape = [2 ** 53, 2 ** 53]));
  if (k === 'shapeNotArray') entryEdit((e) => (e.shape = '2,2'));
  if (k === 'entryNotObject') names.length > 0 ? (json[names[c.pick % names.length]] = c.pick % 2 ? null : 7) : (valid = true);
  if (k === 'metadataNumber') json.__metadata__ = { a: 1 };
  if (k === 'overlap') {
    const withBytes = names.filter((n) => specs.get(n)!.end > specs.get(n)!.begin);
    if (withBytes.length >= 2) {
      const e = json[withBytes[1]] as { data_offsets: number[] };
      e.data_offsets = [e.data_offsets[0] - 1, e.data_offsets[1] - 1];
    } else valid = true;
  }
  let text = JSON.stringify(json);
  if (k === 'jsonGarbage') text = '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}' + Buffer.from(c.garbage).toString('latin1');
  if (k === 'jsonArray') text = '[1, 2, 3]';
  const head = Buffer.from(text, 'utf8');
  const buf = Buffer.alloc(8 + head.length + off);
  buf.writeBigUInt64LE(BigInt(head.length), 0);
  head.copy(buf, 8);
  for (let i = 8 + head.length; i < buf.length; i++) buf[i] = (i * 131 + c.pick) & 0xff;
  let out = buf;
  if (k === 'truncate') out = buf.subarray(0, Math.floor(c.pos * (buf.length - 1)));
  if (k === 'lenHuge') out.writeBigUInt64LE(2n ** 63n + BigInt(c.pick), 0);
  if (k === 'lenPastEnd') out.writeBigUInt64LE(BigInt(buf.length), 0);
  if (k === 'lenShort') {
    const len = Math.floor(c.pos * head.length);
    if (len === head.length) valid = true; // not shorter after all
    out.writeBigUInt64LE(BigInt(len), 0);
  }
  if (k === 'lenZero') out.writeBigUInt64LE(0n, 0);
  if (k === 'byteFlip' && buf.length > 8) {
    out = Buffer.from(buf);
    const i = 8 + Math.floor(c.pos * (head.length - 1));
    out[i] ^= 1 << (c.pick % 8);
  }
  if (k === 'randomBytes') out = Buffer.from(c.garbage);
  if (k === 'trailingGarbage') {
    out = Buffer.concat([buf, Buffer.from(c.garbage)]); // extra bytes after the data: still a valid file
    valid = true;
  }
  if (k === 'truncate' && out.length === buf.length) valid = true;
  return { buf: out, valid, built: { buf: out, specs } };
}

/** Invariants of any header that parsed, whatever the input. */
function checkConsistent(h: ReturnType<typeof parseHeader>, fileSize: number): void {
  let total = 0;
  const ranges: Array<[number, number]> = [];
  for (const [name, e] of h.entries) {
    const [b, en] = e.dataOffsets;
    if (!(Number.isSafeInteger(b) && Number.isSafeInteger(en) && 0 <= b && b <= en && h.dataStart + en <= fileSize))
      throw new Error(`parsed entry '${name}' has offsets [${b}, ${en}] outside the file (${fileSize} bytes)`);
    const numel = e.shape.reduce((x, y) => x * y, 1);
    if (numel * SIZES[e.dtype] !== en - b) throw new Error(`parsed entry '${name}' has a size that does not match its shape`);
    total += en - b;
    ranges.push([b, en]);
  }
  if (total > fileSize) throw new Error(`parsed tensors claim ${total} bytes of a ${fileSize}-byte file`);
  ranges.sort((p, q) => p[0] - q[0]);
  for (let i = 1; i < ranges.length; i++) if (ranges[i][0] < ranges[i - 1][1] && ranges[i][0] < ranges[i][1]) throw new Error('parsed tensors overlap');
}

let tmpDir: string | null = null;
function tmpFile(): string {
  if (!tmpDir) tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-fuzz-'));
  return path.join(tmpDir, 'case.safetensors');
}
export function cleanupFileTargets(): void {
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
  tmpDir = null;
}

function readAll(get: (n: string) => unknown, names: string[], specs: Built['specs'] | null, buf: Buffer, dataStart: number, reader: { bytes(n: string): Uint8Array }): void {
  for (const n of names) {
    const bytes = reader.bytes(n);
    if (specs) {
      const s = specs.get(n)!;
      const want = buf.subarray(dataStart + s.begin, dataStart + s.end);
      if (Buffer.compare(Buffer.from(bytes), want) !== 0) throw new Error(`tensor '${n}' bytes differ from the file`);
    }
    try {
      const t = get(n) as { dispose?: () => void };
      t?.dispose?.();
    } catch (e) {
      if (!isTyped(e)) throw e;
    }
  }
}

export const headerTarget = fc.property(headerCase, (c) => {
  const { buf, valid, built } = build(c);
  const attempt = (fn: () => void) => {
    try {
      fn();
      return null;
    } catch (e) {
      if (!isTyped(e)) throw new Error(`untyped error: ${String((e as Error)?.stack ?? e)}`);
      return e as Error;
    }
  };
  valid ? tally.valid++ : tally.invalid++;
  // 1. in memory
  const memErr = attempt(() => {
    const f = new SafetensorsFile(buf, 'fuzz');
    checkConsistent(f.header, buf.length);
    readAll((n) => f.tensor(n), f.names, valid ? built.specs : null, buf, f.header.dataStart, f);
  });
  if (valid && memErr) throw new Error(`a valid file was refused: ${memErr.message}`);
  // 2. through the positioned reader
  const file = tmpFile();
  fs.writeFileSync(file, buf);
  const fileErr = attempt(() => {
    const r = new SafetensorsReader(file);
    try {
      checkConsistent(r.header, buf.length);
      readAll((n) => r.tensor(n), r.names, valid ? built.specs : null, buf, r.header.dataStart, r);
    } finally {
      r.close();
    }
  });
  if (valid && fileErr) throw new Error(`a valid file was refused by SafetensorsReader: ${fileErr.message}`);
  if (!valid && !memErr && !fileErr && c.corruption !== 'byteFlip' && c.corruption !== 'randomBytes')
    throw new Error(`corruption '${c.corruption}' was accepted`);
  // 3. parseHeader's own arguments
  const argErr = attempt(() => parseHeader(buf, NaN as number, 'fuzz'));
  if (!argErr) throw new Error('parseHeader accepted fileSize NaN');
});

// ---- adapter_config.json -------------------------------------------------------------------

const VALUES = fc.constantFrom<unknown>(0, 1, -1, 8, 1.5, 0.1, 1e308, '8', 'all-linear', '', true, false, null, [], ['q_proj'], [1, 2], {}, { a: 2 }, { '(': 1 });
const PEFT_KEYS = ['r', 'target_modules', 'exclude_modules', 'lora_alpha', 'lora_dropout', 'fan_in_fan_out', 'bias', 'use_rslora',
  'init_lora_weights', 'layers_to_transform', 'layers_pattern', 'rank_pattern', 'alpha_pattern', 'task_type', 'inference_mode',
  'peft_type', 'use_dora', 'lora_bias', 'modules_to_save', 'loftq_config', 'made_up_key'];

const configCase = fc.record({
  base: fc.record({ r: fc.integer({ min: 1, max: 64 }), alpha: fc.integer({ min: 1, max: 64 }), dropout: fc.constantFrom(0, 0.05, 0.1), targets: fc.constantFrom<unknown>(['q_proj', 'v_proj'], 'all-linear', '.*proj') }),
  edits: fc.array(fc.tuple(fc.constantFrom(...PEFT_KEYS), VALUES), { maxLength: 3 }),
  garbage: fc.option(fc.string({ maxLength: 40 }), { nil: null }),
});

export const configTarget = fc.property(configCase, (c) => {
  const json: Record<string, unknown> = { peft_type: 'LORA', r: c.base.r, lora_alpha: c.base.alpha, lora_dropout: c.base.dropout, target_modules: c.base.targets, bias: 'none' };
  for (const [k, v] of c.edits) json[k] = v;
  const text = c.garbage === null ? JSON.stringify(json) : c.garbage;
  const valid = c.garbage === null && c.edits.length === 0;
  valid ? tally.valid++ : tally.invalid++;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return; // not JSON: readAdapter reports it (covered by its own tests); nothing reaches the reader
  }
  try {
    const cfg = resolveConfig(fromPeftJson(parsed, 'adapter_config.json', () => {}));
    // Whatever is accepted must have the types the layers rely on.
    if (!(Number.isInteger(cfg.r) && cfg.r >= 1)) throw new Error(`accepted r = ${JSON.stringify(cfg.r)}`);
    if (!(typeof cfg.loraAlpha === 'number' && Number.isFinite(cfg.loraAlpha))) throw new Error(`accepted lora_alpha = ${JSON.stringify(cfg.loraAlpha)}`);
    if (!(typeof cfg.loraDropout === 'number' && cfg.loraDropout >= 0 && cfg.loraDropout < 1)) throw new Error(`accepted lora_dropout = ${JSON.stringify(cfg.loraDropout)}`);
    for (const key of ['fanInFanOut', 'useRslora', 'inferenceMode'] as const)
      if (typeof cfg[key] !== 'boolean') throw new Error(`accepted ${key} = ${JSON.stringify(cfg[key])}`);
    if (cfg.taskType !== null && typeof cfg.taskType !== 'string') throw new Error(`accepted task_type = ${JSON.stringify(cfg.taskType)}`);
  } catch (e) {
    if (!isTyped(e)) throw e instanceof Error && e.message.startsWith('accepted') ? e : new Error(`untyped error: ${String((e as Error)?.stack ?? e)}`);
    if (valid) throw new Error(`a valid config was refused: ${(e as Error).message}`);
  }
});
