/**
 * How a layer's operations run: each body (a generator of kernel steps, exec.ts) is driven
 * synchronously or step by step off the JS thread, on the layer's cuda stream; while an async one is
 * in flight every other operation on the layer is refused, since its tensors are busy.
 */
import { Device } from '../dtype';
import { CudaStream, checkStreamFor } from '../cuda';
import { StateError } from '../errors';
import { KernelSteps, runAsync, runSync } from '../exec';

export class LayerRunner {
  #asyncOp: string | null = null;
  #stream: CudaStream | null = null;

  /** The cuda stream the layer's operations run on; null: the caller's current stream. */
  get stream(): CudaStream | null {
    return this.#stream;
  }

  /** Only cuda layers take a stream (device: where the layer's weight lives). */
  setStream(s: CudaStream | null, device: Device): void {
    this.requireIdle('stream');
    if (s === null) {
      this.#stream = null;
      return;
    }
    this.#stream = checkStreamFor(s, 'stream', device, 'layer');
  }

  /** Runs an operation body synchronously; refused while an async one is in flight on this layer. */
  runSync<T>(op: string, steps: KernelSteps<T>): T {
    this.requireIdle(op);
    return runSync(steps, this.#stream?.id ?? 0);
  }

  /** Runs an operation body step by step off the JS thread; one async operation per layer at a time. */
  async runAsync<T>(op: string, steps: KernelSteps<T>): Promise<T> {
    this.requireIdle(`${op}Async`);
    const stream = this.#stream?.id ?? 0;
    this.#asyncOp = `${op}Async`;
    try {
      return await runAsync(steps, stream);
    } finally {
      this.#asyncOp = null;
    }
  }

  requireIdle(op: string): void {
    if (this.#asyncOp) throw new StateError(`${op}: ${this.#asyncOp}() is still running on this layer; await it first`);
  }
}
