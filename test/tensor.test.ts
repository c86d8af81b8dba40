/** Tensor: construction, dtypes, copies, conversions, disposal and errors. */
import { DTypeError, LoraTypeError, ShapeError, StateError, Tensor, LoraRangeError } from '../lib';

describe('Tensor construction', () => {
  test('from Float32Array keeps values, shape and dtype', () => {
    const t = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('f32');
    expect(t.device).toBe('cpu');
    expect(t.numel).toBe(6);
    expect(Array.from(t.toFloat32Array())).toEqual([1, 2, 3, 4, 5, 6]);
  });

  test('from number[] and Float64Array narrow to f32', () => {
    expect(Array.from(Tensor.from([0.5, -1.25], [2]).toFloat32Array())).toEqual([0.5, -1.25]);
    const t = Tensor.from(new Float64Array([0.1]), [1]);
    expect(t.toFloat32Array()[0]).toBe(Math.fround(0.1));
  });

  test('zeros is zero-filled, including 0-element and scalar shapes', () => {
    expect(Array.from(Tensor.zeros([3, 2]).toFloat32Array())).toEqual([0, 0, 0, 0, 0, 0]);
    expect(Tensor.zeros([0, 5]).numel).toBe(0);
    expect(Tensor.zeros([]).numel).toBe(1);
  });

  test('i32 and i64 index tensors', () => {
    const a = Tensor.from(new Int32Array([3, -1, 7]), [3]);
    expect(a.dtype).toBe('i32');
    expect(Array.from(a.toInt32Array())).toEqual([3, -1, 7]);
    const b = Tensor.from(new BigInt64Array([5n, 2n ** 40n]), [2]);
    expect(b.dtype).toBe('i64');
    expect(Array.from(b.toBigInt64Array())).toEqual([5n, 2n ** 40n]);
    const c = Tensor.from(new Int32Array([4, 9]), [2], { dtype: 'i64' });
    expect(Array.from(c.toBigInt64Array())).toEqual([4n, 9n]);
  });
});

describe('16-bit storage', () => {
  test('bf16 rounds to nearest even once', () => {
    // 1 + 2^-8 is halfway between two bf16 values (1 and 1 + 2^-7): ties go to the even one (1).
    // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6.
    const t = Tensor.from([1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.140625], [3], { dtype: 'bf16' });
    expect(Array.from(t.toFloat32Array())).toEqual([1, 1 + 2 ** -6, 3.140625]);
    expect(Array.from(t.toUint16Array())).toEqual([0x3f80, 0x3f82, 0x4049]);
  });

  test('f16 handles normal, subnormal, overflow and NaN', () => {
    const t = Tensor.from([1.5, 2 ** -24, 70000, -0, NaN, 65504], [6], { dtype: 'f16' });
    const v = t.toFloat32Array();
    expect(v[0]).toBe(1.5);
    expect(v[1]).toBe(2 ** -24);
    expect(v[2]).toBe(Infinity);
    expect(Object.is(v[3], -0)).toBe(true);
    expect(Number.isNaN(v[4])).toBe(true);
    expect(v[5]).toBe(65504);
    expect(t.toUint16Array()[0]).toBe(0x3e00);
  });

  test('Uint16Array bit patterns fill f16/bf16 directly', () => {
    const t = Tensor.from(new Uint16Array([0x3c00, 0xc000]), [2], { dtype: 'f16' });
    expect(Array.from(t.toFloat32Array())).toEqual([1, -2]);
  });

  test('to() converts between float dtypes; f32 → bf16 → f32 loses only rounding', () => {
    const src = Tensor.from([1.0001, -2.5, 1e-3], [3]);
    const back = src.to({ dtype: 'bf16' }).to({ dtype: 'f32' }).toFloat32Array();
    for (let i = 0; i < 3; i++) expect(Math.abs(back[i] - src.toFloat32Array()[i])).toBeLessThanOrEqual(Math.abs(src.toFloat32Array()[i]) * 2 ** -8);
  });
});

describe('copies', () => {
  test('copyFrom a typed array or a tensor, in place, same numel', () => {
    const t = Tensor.zeros([2, 2]);
    t.copyFrom(new Float32Array([1, 2, 3, 4]));
    expect(Array.from(t.toFloat32Array())).toEqual([1, 2, 3, 4]);
    t.copyFrom(Tensor.from([9, 8, 7, 6], [4], { dtype: 'bf16' }));
    expect(Array.from(t.toFloat32Array())).toEqual([9, 8, 7, 6]);
  });

  test('toFloat32Array is a copy', () => {
    const t = Tensor.from([1, 2], [2]);
    const a = t.toFloat32Array();
    a[0] = 100;
    expect(t.toFloat32Array()[0]).toBe(1);
  });

  test('a subarray view with a byte offset is read at its offset', () => {
    const big = new Float32Array([0, 1, 2, 3, 4, 5]);
    const t = Tensor.from(big.subarray(3), [3]);
    expect(Array.from(t.toFloat32Array())).toEqual([3, 4, 5]);
  });

  test('clone is independent', () => {
    const t = Tensor.from([1, 2], [2]);
    const c = t.clone();
    t.copyFrom(new Float32Array([5, 5]));
    expect(Array.from(c.toFloat32Array())).toEqual([1, 2]);
  });
});

describe('errors name the argument and the shapes', () => {
  test('data length must match the shape', () => {
    expect(() => Tensor.from([1, 2, 3], [2, 2])).toThrow(ShapeError);
    expect(() => Tensor.from([1, 2, 3], [2, 2])).toThrow('data: has 3 elements but shape [2, 2] needs 4');
  });

  test('bad shapes', () => {
    expect(() => Tensor.zeros([2, -1])).toThrow(LoraRangeError);
    expect(() => Tensor.zeros([2, 1.5])).toThrow('shape[1]: expected a non-negative integer, got 1.5');
    expect(() => Tensor.zeros([2 ** 30, 2 ** 30])).toThrow(/too many elements/);
    expect(() => Tensor.zeros('3' as unknown as number[])).toThrow(LoraTypeError);
  });

  test('wrong typed-array type or dtype', () => {
    expect(() => Tensor.from(new Uint16Array(2), [2])).toThrow(DTypeError);
    expect(() => Tensor.from(new Int32Array(2), [2], { dtype: 'f32' })).toThrow(/Int32Array cannot fill a f32 tensor/);
    expect(() => Tensor.from(new Float32Array(2), [2], { dtype: 'i32' })).toThrow(LoraTypeError);
    expect(() => Tensor.zeros([2], { dtype: 'f64' as never })).toThrow(/opts.dtype: expected one of/);
    expect(() => Tensor.zeros([2], { device: 'tpu' as never })).toThrow(/opts.device/);
    expect(() => Tensor.zeros([2], { dtyp: 'f32' } as never)).toThrow(/unknown option 'dtyp'/);
    expect(() => Tensor.from(['a' as unknown as number], [1])).toThrow('data[0]: expected a number, got string');
    expect(() => Tensor.from([1], [1]).toInt32Array()).toThrow(DTypeError);
  });

  test('copyFrom checks numel and dtype family', () => {
    const t = Tensor.zeros([4]);
    expect(() => t.copyFrom(new Float32Array(3))).toThrow(ShapeError);
    expect(() => t.copyFrom(Tensor.zeros([3]))).toThrow(/src: has 3 elements \(shape \[3\]\) but this tensor has 4/);
    expect(() => t.copyFrom(Tensor.from(new Int32Array(4), [4]))).toThrow(DTypeError);
  });

  test('use after dispose throws StateError; dispose twice is harmless', () => {
    const t = Tensor.from([1, 2], [2]);
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(() => t.toFloat32Array()).toThrow(StateError);
    expect(() => t.toFloat32Array()).toThrow(/used after dispose/);
    expect(() => t.copyFrom(new Float32Array(2))).toThrow(StateError);
    expect(() => t.dispose()).not.toThrow();
  });

  test('a detached ArrayBuffer is rejected', () => {
    const a = new Float32Array(4);
    structuredClone(a.buffer, { transfer: [a.buffer] });
    expect(() => Tensor.from(a, [4])).toThrow(LoraTypeError); // named as detached, not as a length-0 view
    expect(() => Tensor.from(a, [4])).toThrow(/data: the ArrayBuffer is detached/);
  });
});

describe('memory', () => {
  test('dispose frees memory at once', () => {
    const rss0 = process.memoryUsage().rss;
    for (let i = 0; i < 200; i++) Tensor.zeros([1024, 1024]).dispose();
    expect(process.memoryUsage().rss - rss0).toBeLessThan(200 * 1024 * 1024);
  });

  test('tensors dropped without dispose are freed by GC (native memory is reported to V8)', async () => {
    const rss0 = process.memoryUsage().rss;
    // 1.2 GB allocated in total; without reporting, V8 would not collect and RSS would follow.
    for (let i = 0; i < 300; i++) {
      Tensor.zeros([1024, 1024]);
      if (i % 10 === 0) await new Promise((r) => setImmediate(r));
    }
    expect(process.memoryUsage().rss - rss0).toBeLessThan(500 * 1024 * 1024);
  });
});
