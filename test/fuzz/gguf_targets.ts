/**
 * Fuzz target for the GGUF reader, like the safetensors header target: random files are encoded
 * here (independently of lib/gguf/writer.ts, recording where each field sits), then one field is
 * corrupted. Corrupt files must give typed errors; whatever parses must be self-consistent (tensors
 * aligned, inside the file, not overlapping), so no read goes past the file and memory stays bounded
 * by the file's size; valid files must read back exactly, and lib's writer must produce the same
 * header bytes for them.
 */
import fc from 'fast-check';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GgufReader } from '../../lib/gguf/reader';
import { serializeGgufHeader } from '../../lib/gguf/writer';
import { GgufArray, GgufKV, GgufValueType, array } from '../../lib/gguf/metadata';
import { isTyped, tally } from './fuzz_common';

const SCALARS: GgufValueType[] = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'u64', 'i64', 'f64'];
const TYPE_ID: Record<string, number> = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 };
const SIZE: Record<string, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, bool: 1, u64: 8, i64: 8, f64: 8 };
// ggml types the generator uses: [id, block size, bytes per block]
const TENSOR_TYPES: Array<[number, number, number]> = [[0, 1, 4], [1, 1, 2], [30, 1, 2], [8, 32, 34], [2, 32, 18], [12, 256, 144], [14, 256, 210]];

function scalarValue(t: GgufValueType, seed: number): GgufKV['value'] {
  switch (t) {
    case 'u8': return seed & 255;
    case 'i8': return (seed & 255) - 128;
    case 'u16': return seed & 65535;
    case 'i16': return (seed & 65535) - 32768;
    case 'u32': return seed >>> 0;
    case 'i32': return seed | 0;
    case 'f32': return Math.fround(seed / 7);
    case 'f64': return seed / 3;
    case 'bool': return seed % 2 === 0;
    case 'string': return `s${seed}é`.repeat(seed % 3);
    case 'u64': return BigInt(seed) * 4294967296n;
    default: return -BigInt(seed);
  }
}

const kvArb = fc.record({
  type: fc.constantFrom<GgufValueType | 'array' | 'nested'>(...SCALARS, 'array', 'nested'),
  item: fc.constantFrom(...SCALARS),
  n: fc.integer({ min: 0, max: 5 }),
  seed: fc.nat(),
});
const tensorArb = fc.record({ t: fc.nat({ max: TENSOR_TYPES.length - 1 }), blocks: fc.integer({ min: 0, max: 3 }), rows: fc.integer({ min: 1, max: 3 }), dims: fc.integer({ min: 1, max: 3 }) });

const CORRUPTIONS = [null, null, null, 'magic', 'version', 'versionBE', 'tensorCount', 'kvCount', 'strLen', 'strLenPastEnd', 'valueType', 'arrayType', 'arrayCount',
  'deepNesting', 'boolValue', 'dupKey', 'tensorType', 'nDims', 'neHuge', 'neBlock', 'offsetMisaligned', 'offsetPastEnd', 'overlap', 'dupTensor',
  'alignmentType', 'alignmentValue', 'truncate', 'byteFlip', 'randomBytes', 'trailingGarbage'] as const;

const caseArb = fc.record({
  kvs: fc.array(kvArb, { maxLength: 5 }),
  tensors: fc.array(tensorArb, { maxLength: 4 }),
  alignment: fc.constantFrom(undefined, 32, 64, 8),
  corruption: fc.constantFrom(...CORRUPTIONS),
  pick: fc.nat(),
  pos: fc.double({ min: 0, max: 1, noNaN: true }),
  garbage: fc.uint8Array({ maxLength: 64 }),
});
type Case = typeof caseArb extends fc.Arbitrary<infer T> ? T : never;

class Enc {
  parts: number[] = [];
  put(bytes: ArrayLike<number>): number {
    const at = this.parts.length;
    for (let i = 0; i < bytes.length; i++) this.parts.push(bytes[i]);
    return at;
  }
  u32(v: number): number {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    return this.put(b);
  }
  u64(v: bigint | number): number {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    return this.put(b);
  }
  str(s: string): number {
    const b = Buffer.from(s, 'utf8');
    const at = this.u64(b.length);
    this.put(b);
    return at;
  }
  scalar(t: GgufValueType, v: GgufKV['value']): number {
    if (t === 'string') return this.str(v as string);
    const b = Buffer.alloc(SIZE[t]);
    const w: Record<string, () => void> = {
      u8: () => b.writeUInt8(v as number), i8: () => b.writeInt8(v as number), u16: () => b.writeUInt16LE(v as number), i16: () => b.writeInt16LE(v as number),
      u32: () => b.writeUInt32LE(v as number), i32: () => b.writeInt32LE(v as number), f32: () => b.writeFloatLE(v as number), f64: () => b.writeDoubleLE(v as number),
      bool: () => b.writeUInt8(v ? 1 : 0), u64: () => b.writeBigUInt64LE(v as bigint), i64: () => b.writeBigInt64LE(v as bigint),
    };
    w[t]();
    return this.put(b);
  }
  value(t: GgufValueType, v: GgufKV['value'], marks: Record<string, number[]>): void {
    if (t !== 'array') {
      const at = this.scalar(t, v);
      (marks[t] ??= []).push(at);
      return;
    }
    const a = v as GgufArray;
    (marks.arrayType ??= []).push(this.u32(TYPE_ID[a.itemType]));
    (marks.arrayCount ??= []).push(this.u64(a.items.length));
    for (const x of Array.from(a.items as ArrayLike<GgufKV['value']>)) this.value(a.itemType, x, marks);
  }
}

interface Built { buf: Buffer; valid: boolean; kvs: Array<[string, GgufKV]>; data: Map<string, Buffer> }

function build(c: Case): Built {
  const kvs: Array<[string, GgufKV]> = [];
  if (c.alignment !== undefined) kvs.push(['general.alignment', { type: 'u32', value: c.alignment }]);
  c.kvs.forEach((k, i) => {
    let e: GgufKV;
    if (k.type === 'array') e = { type: 'array', value: array(k.item, Array.from({ length: k.n }, (_, j) => scalarValue(k.item, k.seed + j)) as never) };
    else if (k.type === 'nested') e = { type: 'array', value: array('array', [array(k.item, [scalarValue(k.item, k.seed)] as never), array('string', ['x'])]) };
    else e = { type: k.type, value: scalarValue(k.type, k.seed) };
    kvs.push([`k${i}.${k.type}`, e]);
  });
  const alignment = c.alignment ?? 32;
  const e = new Enc();
  const marks: Record<string, number[]> = {};
  const at = { magic: e.put(Buffer.from('GGUF')), version: e.u32(3), tensorCount: e.u64(c.tensors.length), kvCount: e.u64(kvs.length) };
  const keyAt: number[] = [];
  const typeAt: number[] = [];
  for (const [k, v] of kvs) {
    keyAt.push(e.str(k));
    typeAt.push(e.u32(TYPE_ID[v.type]));
    e.value(v.type, v.value, marks);
  }
  const tAt: Array<{ name: number; nDims: number; ne: number; type: number; offset: number }> = [];
  const data = new Map<string, Buffer>();
  const sizes: number[] = [];
  const offsets: number[] = [];
  let off = 0;
  const specs = c.tensors.map((t, i) => {
    const [id, bs, ts] = TENSOR_TYPES[t.t];
    const ne = [t.blocks * bs, t.rows, 2].slice(0, t.dims);
    const numel = ne.reduce((a, b) => a * b, 1);
    const nbytes = (numel / bs) * ts;
    const name = `blk.${i}.w`;
    tAt.push({ name: e.str(name), nDims: e.u32(ne.length), ne: ne.map((n) => e.u64(n))[0], type: e.u32(id), offset: e.u64(off) });
    data.set(name, Buffer.from(Array.from({ length: nbytes }, (_, j) => (j * 37 + i) & 255)));
    sizes.push(nbytes);
    offsets.push(off);
    off += Math.ceil(nbytes / alignment) * alignment;
    return { name, type: id, shape: [...ne].reverse() };
  });
  const headLen = e.parts.length;
  const dataStart = Math.ceil(headLen / alignment) * alignment;
  const buf = Buffer.alloc(dataStart + off);
  Buffer.from(e.parts).copy(buf);
  c.tensors.forEach((_, i) => data.get(`blk.${i}.w`)!.copy(buf, dataStart + offsets[i]));
  // the library writer must lay out the same header
  const lib = serializeGgufHeader(kvs, specs);
  if (!lib.head.equals(buf.subarray(0, headLen))) throw new Error('serializeGgufHeader differs from the independent encoding');

  let valid = c.corruption === null;
  let out = buf;
  const p = c.pick;
  const any = (list: number[] | undefined) => (list && list.length ? list[p % list.length] : -1);
  const edit = (pos: number, fn: (b: Buffer, pos: number) => void) => (pos >= 0 ? fn(out, pos) : (valid = true));
  switch (c.corruption) {
    case 'magic': out.write('GGUG', 0); break;
    case 'version': out.writeUInt32LE([0, 1, 4, 99][p % 4], at.version); break;
    case 'versionBE': out.writeUInt32BE(3, at.version); break;
    case 'tensorCount': out.writeBigUInt64LE(BigInt(c.tensors.length + 1) + (BigInt(p) << 20n), at.tensorCount); break;
    case 'kvCount': out.writeBigUInt64LE(BigInt(kvs.length + 1) + (BigInt(p) << 30n), at.kvCount); break;
    case 'strLen': edit(any(keyAt), (b, q) => b.writeBigUInt64LE(2n ** 62n + BigInt(p), q)); break;
    case 'strLenPastEnd': edit(any(keyAt), (b, q) => b.writeBigUInt64LE(BigInt(b.length), q)); break;
    case 'valueType': edit(any(typeAt), (b, q) => b.writeUInt32LE(13 + (p % 1000), q)); break;
    case 'arrayType': edit(any(marks.arrayType), (b, q) => b.writeUInt32LE(13 + (p % 1000), q)); break;
    case 'arrayCount': edit(any(marks.arrayCount), (b, q) => b.writeBigUInt64LE(2n ** 40n + BigInt(p), q)); break;
    case 'boolValue': edit(any(marks.bool), (b, q) => (b[q] = 2 + (p % 254))); break;
    case 'dupKey': // key 1 becomes key 0 where both have the same length
      if (kvs.length >= 2 && kvs[0][0].length === kvs[1][0].length) Buffer.from(out.subarray(keyAt[0], keyAt[0] + 8 + kvs[0][0].length)).copy(out, keyAt[1]);
      else valid = true;
      break;
    case 'tensorType': edit(tAt.length ? tAt[p % tAt.length].type : -1, (b, q) => b.writeUInt32LE([43, 4, 5, 31, 1000 + p][p % 5], q)); break;
    case 'nDims': edit(tAt.length ? tAt[p % tAt.length].nDims : -1, (b, q) => b.writeUInt32LE(5 + (p % 100), q)); break;
    case 'neHuge': edit(tAt.length ? tAt[p % tAt.length].ne : -1, (b, q) => b.writeBigUInt64LE(2n ** 60n + BigInt(p), q)); break;
    case 'neBlock': {
      const i = tAt.length ? p % tAt.length : -1;
      if (i >= 0 && TENSOR_TYPES[c.tensors[i].t][1] > 1) out.writeBigUInt64LE(out.readBigUInt64LE(tAt[i].ne) + 1n, tAt[i].ne);
      else valid = true; // any row length is whole blocks of 1
      break;
    }
    case 'offsetMisaligned': edit(tAt.length ? tAt[p % tAt.length].offset : -1, (b, q) => b.writeBigUInt64LE(b.readBigUInt64LE(q) + BigInt(1 + (p % (alignment - 1))), q)); break;
    case 'offsetPastEnd': edit(tAt.length ? tAt[p % tAt.length].offset : -1, (b, q) => b.writeBigUInt64LE(BigInt(Math.ceil(b.length / alignment) * alignment), q));
      break;
    case 'overlap': {
      const idx = sizes.map((s, i) => (s > 0 ? i : -1)).filter((i) => i >= 0);
      if (idx.length >= 2) out.writeBigUInt64LE(out.readBigUInt64LE(tAt[idx[0]].offset), tAt[idx[1]].offset);
      else valid = true;
      break;
    }
    case 'dupTensor': tAt.length >= 2 ? out.write('blk.0.w', tAt[1].name + 8) : (valid = true); break;
    case 'alignmentType': c.alignment !== undefined ? out.writeUInt32LE(10, typeAt[0]) : (valid = true); break; // u32 → u64 also shifts what follows
    case 'alignmentValue': c.alignment !== undefined ? out.writeUInt32LE([0, 3, 48, 100][p % 4], keyAt[0] + 8 + 17 + 4) : (valid = true); break; // general.alignment is first
    case 'truncate': out = buf.subarray(0, Math.floor(c.pos * (buf.length - 1))); break;
    case 'byteFlip': if (buf.length > 0) { out = Buffer.from(buf); out[Math.floor(c.pos * (headLen - 1))] ^= 1 << (p % 8); } break;
    case 'randomBytes': out = Buffer.concat([Buffer.from('GGUF'), Buffer.from(c.garbage)]); break;
    case 'trailingGarbage': out = Buffer.concat([buf, Buffer.from(c.garbage)]); valid = true; break;
    case 'deepNesting': {
      const d = new Enc();
      d.put(Buffer.from('GGUF')); d.u32(3); d.u64(0); d.u64(1); d.str('deep'); d.u32(9);
      for (let i = 0; i < 9 + (p % 4); i++) { d.u32(9); d.u64(1); }
      d.u32(0); d.u64(0);
      out = Buffer.from(d.parts);
      break;
    }
  }
  // cutting only padding after the last tensor's bytes (or after a header without tensors) loses nothing
  const needed = c.tensors.length ? Math.max(...offsets.map((o, i) => dataStart + o + sizes[i])) : headLen;
  if (c.corruption === 'truncate' && out.length >= needed) valid = true;
  return { buf: out, valid, kvs, data };
}

let tmpDir: string | null = null;
export function cleanupGgufTargets(): void {
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
  tmpDir = null;
}

export const ggufTarget = fc.property(caseArb, (c) => {
  const b = build(c);
  b.valid ? tally.valid++ : tally.invalid++;
  if (!tmpDir) tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-fuzz-gguf-'));
  const file = path.join(tmpDir, 'case.gguf');
  fs.writeFileSync(file, b.buf);
  let r: GgufReader | null = null;
  try {
    r = new GgufReader(file);
    const size = b.buf.length;
    const ranges = r.tensors.map((t) => [t.offset, t.offset + t.nbytes] as const).filter(([x, y]) => y > x).sort((x, y) => x[0] - y[0]);
    for (const t of r.tensors)
      if (!(t.offset % r.alignment === 0 && r.dataStart + t.offset + t.nbytes <= size)) throw new Error(`parsed tensor '${t.name}' lies outside the file or is misaligned`);
    for (let i = 1; i < ranges.length; i++) if (ranges[i][0] < ranges[i - 1][1]) throw new Error('parsed tensors overlap');
    for (const t of r.tensors) {
      const got = Buffer.from(r.bytes(t.name));
      if (b.valid && !got.equals(b.data.get(t.name)!)) throw new Error(`tensor '${t.name}' bytes differ`);
      if (t.type === 0 || t.type === 8) r.float32(t.name);
    }
    if (b.valid)
      for (const [k, e] of b.kvs) {
        const m = r.metadata.get(k);
        if (!m || m.type !== e.type || JSON.stringify(m.value, big) !== JSON.stringify(e.value, big)) throw new Error(`metadata '${k}' read back differently`);
      }
    if (!b.valid && !['byteFlip', 'randomBytes'].includes(c.corruption!)) throw new Error(`corruption '${c.corruption}' was accepted`);
  } catch (e) {
    if (!isTyped(e)) throw e instanceof Error && /differ|accepted|outside|overlap/.test(e.message) ? e : new Error(`untyped error: ${String((e as Error)?.stack ?? e)}`);
    if (b.valid) throw new Error(`a valid file was refused: ${(e as Error).message}`);
  } finally {
    r?.close();
  }
});

function big(_k: string, v: unknown): unknown {
  if (typeof v === 'bigint') return `${v}n`;
  if (ArrayBuffer.isView(v)) return Array.from(v as unknown as ArrayLike<unknown>, (x) => (typeof x === 'bigint' ? `${x}n` : x));
  return v;
}
