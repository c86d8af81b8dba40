/** safetensors: positioned-read reader, atomic streaming writer, header validation, shards. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Checkpoint, SafetensorsReader, SafetensorsStreamWriter, Tensor, parseHeader, serializeHeader, writeSafetensors } from '../lib';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-st-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function header(json: unknown, dataBytes = 0, rawText?: string): Buffer {
  const text = Buffer.from(rawText ?? JSON.stringify(json));
  const buf = Buffer.alloc(8 + text.length + dataBytes);
  buf.writeBigUInt64LE(BigInt(text.length), 0);
  text.copy(buf, 8);
  return buf;
}

describe('write and read back', () => {
  test('F32, F16, BF16, I32, I64 tensors and raw U8 bytes round-trip with metadata', () => {
    const f = path.join(dir, 'a.safetensors');
    const vals = [1.5, -2.25, 3, 0.125, 1 / 1024, 7];
    const t32 = Tensor.from(vals, [2, 3]);
    const t16 = Tensor.from(vals, [3, 2], { dtype: 'f16' });
    const tb16 = Tensor.from(vals, [6], { dtype: 'bf16' });
    const ti32 = Tensor.from(new Int32Array([1, -2, 3]), [3]);
    const ti64 = Tensor.from(new BigInt64Array([5n, -6n]), [1, 2]);
    const raw = { dtype: 'U8', shape: [3], bytes: new Uint8Array([9, 8, 7]) };
    writeSafetensors(f, new Map<string, Tensor | typeof raw>([['a', t32], ['b', t16], ['c', tb16], ['d', ti32], ['e', ti64], ['u', raw]]), { format: 'pt', note: 'x' });
    const r = new SafetensorsReader(f);
    expect(r.metadata).toEqual({ format: 'pt', note: 'x' });
    expect(r.header.dataStart % 8).toBe(0);
    expect(Array.from(r.float32('a'))).toEqual(vals);
    expect(r.entry('b')).toMatchObject({ dtype: 'F16', shape: [3, 2] });
    expect(Array.from(r.tensor('b').toUint16Array())).toEqual(Array.from(t16.toUint16Array()));
    expect(Array.from(r.tensor('c').toUint16Array())).toEqual(Array.from(tb16.toUint16Array()));
    expect(Array.from(r.tensor('d').toInt32Array())).toEqual([1, -2, 3]);
    expect(Array.from(r.tensor('e').toBigInt64Array())).toEqual([5n, -6n]);
    expect(Array.from(r.bytes('u'))).toEqual([9, 8, 7]);
    expect(Array.from(r.range('a', 4, 8))).toEqual(Array.from(new Uint8Array(new Float32Array([-2.25]).buffer)));
    expect(() => r.tensor('u')).toThrow(/U8 is not one lorakit tensors hold/);
    expect(() => r.range('a', 0, 100)).toThrow(/outside tensor 'a'/);
    expect(() => r.entry('zz')).toThrow(/no tensor 'zz'/);
    r.close();
    expect(() => r.bytes('a')).toThrow(/reader is closed/);
    expect(fs.readdirSync(dir)).toEqual(['a.safetensors']); // no temp file left
  });

  test('the streaming writer takes tensors in header order, in chunks, and leaves nothing behind on failure', () => {
    const f = path.join(dir, 's.safetensors');
    const w = new SafetensorsStreamWriter(f, [{ name: 'x', dtype: 'F32', shape: [4] }, { name: 'y', dtype: 'I32', shape: [1] }]);
    expect(() => w.write('y', new Uint8Array(4))).toThrow(/expected tensor 'x' next/);
    const x = new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer);
    w.write('x', x.subarray(0, 8));
    w.write('x', x.subarray(8));
    expect(() => w.write('y', new Uint8Array(8))).toThrow(/takes 4 bytes/);
    expect(() => w.commit()).toThrow(/only 1 of 2 tensors were written/);
    expect(fs.readdirSync(dir)).toEqual([]);
    const w2 = new SafetensorsStreamWriter(f, [{ name: 'x', dtype: 'F32', shape: [4] }]);
    w2.write('x', x);
    w2.commit();
    expect(Array.from(new SafetensorsReader(f).float32('x'))).toEqual([1, 2, 3, 4]);
  });

  test('serializeHeader pads the JSON to 8 bytes with spaces', () => {
    const h = serializeHeader([{ name: 'a', dtype: 'F32', shape: [1] }]);
    expect(h.length % 8).toBe(0);
    expect(parseHeader(Buffer.concat([h, Buffer.alloc(4)]), h.length + 4).entries.get('a')).toEqual({ dtype: 'F32', shape: [1], dataOffsets: [0, 4] });
  });
});

describe('header validation errors are clear', () => {
  const cases: Array<[string, Buffer, RegExp]> = [
    ['too short', Buffer.alloc(4), /is not a safetensors file: too short/],
    ['length over the bound', (() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(1n << 40n, 0); return b; })(), /is not a safetensors file: its first 8 bytes give a header length of 1099511627776, which exceeds the \d+-byte limit/],
    ['length past the end', (() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(100n, 0); return b; })(), /is not a safetensors file: its first 8 bytes give a header length of 100, which runs past the end of the file/],
    ['invalid JSON', header(null, 0, '{"a": '), /not valid JSON/],
    ['not an object', header([1, 2]), /must be a JSON object/],
    ['unknown dtype', header({ a: { dtype: 'F33', shape: [1], data_offsets: [0, 4] } }, 4), /unknown dtype F33/],
    ['prototype name as dtype', header({ a: { dtype: 'constructor', shape: [1], data_offsets: [0, 4] } }, 4), /unknown dtype constructor/],
    ['bad shape', header({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4), /invalid shape/],
    ['bad offsets', header({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, 4), /invalid data_offsets/],
    ['offsets past the data', header({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, 4), /run past the data section \(4 bytes\)/],
    ['byte size mismatch', header({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, 8), /has 4 bytes but shape \[2\] of F32 needs 8/],
    ['overlap', header({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, 8), /'a' and 'b' overlap/],
    ['metadata not strings', header({ __metadata__: { n: 1 } }), /__metadata__.n must be a string/],
  ];
  test.each(cases)('%s (parseHeader and the file reader)', (_what, buf, re) => {
    expect(() => parseHeader(buf, buf.length, 'buf')).toThrow(re);
    const f = path.join(dir, 'bad.safetensors');
    fs.writeFileSync(f, buf);
    expect(() => new SafetensorsReader(f)).toThrow(re);
  });

  test('paths: missing file and directory', () => {
    expect(() => new SafetensorsReader(path.join(dir, 'nope.safetensors'))).toThrow(/no such file/);
    expect(() => new SafetensorsReader(dir)).toThrow(/is a directory/);
    expect(() => Checkpoint.open(dir)).toThrow(/holds neither model.safetensors.index.json nor model.safetensors/);
  });
});

describe('sharded checkpoints', () => {
  test('index + shards open as one checkpoint; an inconsistent index is refused', () => {
    writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), { a: Tensor.from([1, 2], [2]) });
    writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), { b: Tensor.from([3], [1]) });
    const index = { metadata: { total_size: 12 }, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } };
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    const ck = Checkpoint.open(dir);
    expect(ck.sharded).toBe(true);
    expect(ck.names).toEqual(['a', 'b']);
    expect(Array.from(ck.tensor('b').toFloat32Array())).toEqual([3]);
    ck.close();
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-00002-of-00002.safetensors' } }));
    expect(() => Checkpoint.open(dir)).toThrow(/weight_map says 'a' is in model-00002-of-00002.safetensors/);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: '../x.safetensors' } }));
    expect(() => Checkpoint.open(dir)).toThrow(/must be a shard file name/);
  });
});
