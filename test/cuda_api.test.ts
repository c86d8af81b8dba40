/** The CUDA API surface on a machine without a usable GPU (CI): typed errors, no crash. */
import { CudaStream, LoraLinear, LoraModel, Tensor, backendInfo, cuda } from '../lib';

const usable = backendInfo().usable.includes('cuda');

describe('cuda API without a usable GPU', () => {
  test('backendInfo lists cpu as compiled and usable', () => {
    const info = backendInfo();
    expect(info.compiled).toContain('cpu');
    expect(info.usable).toContain('cpu');
    expect(cuda.isAvailable()).toBe(usable);
  });

  test('a cuda tensor is refused with a typed error naming the device (or works where a GPU is usable)', () => {
    if (usable) {
      const t = Tensor.from([1, 2, 3], [3], { device: 'cuda' });
      expect(Array.from(t.toFloat32Array())).toEqual([1, 2, 3]);
      return;
    }
    let err: Error | undefined;
    try {
      Tensor.zeros([2, 3], { device: 'cuda' });
    } catch (e) {
      err = e as Error;
    }
    expect(err).toBeDefined();
    expect(['LoraTypeError', 'StateError']).toContain(err!.name);
    expect(err!.message).toMatch(/cuda/);
  });

  test('cuda optimizer steps and baseGemm reject cpu tensors by name', () => {
    const p = Tensor.zeros([4]);
    expect(() => cuda.adamwStep(p, p, p, p, { step: 1 })).toThrow(/param: expected a cuda tensor/);
    expect(() => cuda.sgdStep(p, p, null, { lr: 0.1 })).toThrow(/param: expected a cuda tensor/);
    expect(() => cuda.baseGemm(p, p, p)).toThrow(/x: expected a cuda tensor/);
  });

  test('kernelStats: which GPU kernels are usable and used (a typed error in builds without cuda)', () => {
    if (backendInfo().compiled.includes('cuda')) {
      const s = cuda.kernelStats();
      expect(typeof s.sm90GemmLaunches).toBe('number');
      if (!usable) expect(s).toMatchObject({ sm90GemmUsable: false, sm90GemmLaunches: 0, graphCaptures: 0, graphReplays: 0, graphs: 0 });
      return;
    }
    let err: Error | undefined;
    try {
      cuda.kernelStats();
    } catch (e) {
      err = e as Error;
    }
    expect(err?.name).toBe('LoraTypeError');
    expect(err!.message).toMatch(/'cuda' is not available in this build/);
  });

  test('setGraphReplay takes a boolean (a typed error in builds without cuda)', () => {
    expect(() => cuda.setGraphReplay('yes' as never)).toThrow(/on: expected a boolean/);
    if (backendInfo().compiled.includes('cuda')) {
      cuda.setGraphReplay(false);
      expect(cuda.kernelStats().graphReplay).toBe(false);
      return;
    }
    expect(() => cuda.setGraphReplay(true)).toThrow(expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/'cuda' is not available in this build/) }));
  });

  test('an unknown device name is a LoraTypeError', () => {
    expect(() => Tensor.zeros([1], { device: 'tpu' as never })).toThrow(expect.objectContaining({ name: 'LoraTypeError' }));
  });

  test('LoraLinear reports its device and keeps adapters on it', () => {
    const layer = new LoraLinear({ weight: Tensor.zeros([3, 4]) }).addAdapter('a', { r: 2 });
    expect(layer.device).toBe('cpu');
    expect(layer.loraA.get('a')!.device).toBe('cpu');
  });

  test('streams: createStream needs a usable GPU; a cpu layer refuses a stream by name; bad values are typed errors', () => {
    if (!usable) {
      let err: Error | undefined;
      try {
        cuda.createStream();
      } catch (e) {
        err = e as Error;
      }
      expect(['LoraTypeError', 'StateError']).toContain(err?.name);
      expect(err!.message).toMatch(/cuda/);
    }
    const layer = new LoraLinear({ weight: Tensor.zeros([3, 4]) }).addAdapter('a', { r: 2 });
    expect(layer.stream).toBeNull();
    expect(() => {
      layer.stream = {} as never;
    }).toThrow(expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/^stream: expected a CudaStream/) }));
    const disposed = new CudaStream(0);
    expect(disposed.disposed).toBe(true);
    expect(() => {
      layer.stream = disposed;
    }).toThrow(expect.objectContaining({ name: 'StateError', message: 'stream: the cuda stream was disposed' }));
    expect(() => cuda.withStream({} as never, () => 1)).toThrow(expect.objectContaining({ name: 'LoraTypeError' }));
    layer.stream = null;
    expect(layer.forward(Tensor.zeros([1, 4])).shape).toEqual([1, 3]);
    const model = new LoraModel([{ name: 'q', kind: 'linear', weight: Tensor.zeros([3, 4]) }], { targetModules: ['q'], r: 2 });
    expect(model.stream).toBeNull();
    expect(() => {
      model.stream = 7 as never;
    }).toThrow(expect.objectContaining({ name: 'LoraTypeError', message: expect.stringMatching(/^stream: expected a CudaStream/) }));
    expect(() => {
      model.stream = disposed;
    }).toThrow(expect.objectContaining({ name: 'StateError' }));
    model.stream = null;
  });

  test('Tensor.empty on the cpu is zero-filled', () => {
    const t = Tensor.empty([5, 7], { dtype: 'bf16' });
    expect(Array.from(t.toFloat32Array()).every((v) => v === 0)).toBe(true);
  });
});
