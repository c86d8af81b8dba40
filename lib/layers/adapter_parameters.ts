/**
 * The Parameter objects a layer hands out (peft's nn.Parameters lora_A, lora_B, lora_B's bias,
 * lora_magnitude_vector, and the base layer's bias when peft's bias mode makes it trainable): one
 * per tensor, made on first request, so the optimizer holding it and backward() share it; backward
 * adds each fresh gradient into the grad of those handed out.
 */
import { Tensor } from '../tensor';
import { Parameter } from '../parameter';
import { AdapterGrads } from './options';

export class AdapterParameters {
  readonly #factors = new Map<string, [Parameter, Parameter]>();
  readonly #magnitudes = new Map<string, Parameter>();
  readonly #loraBBias = new Map<string, Parameter>();
  #baseBias: Parameter | null = null;

  /** [lora_A, lora_B] of adapter `name`; the same objects on every call. */
  factors(name: string, A: Tensor, B: Tensor): [Parameter, Parameter] {
    let pair = this.#factors.get(name);
    if (!pair) {
      pair = [new Parameter(`lora_A.${name}.weight`, 'lora_A', name, A), new Parameter(`lora_B.${name}.weight`, 'lora_B', name, B)];
      this.#factors.set(name, pair);
    }
    return [pair[0], pair[1]];
  }

  /** A DoRA adapter's magnitude vector; the same object on every call. */
  magnitude(name: string, m: Tensor): Parameter {
    let p = this.#magnitudes.get(name);
    if (!p) {
      p = new Parameter(`lora_magnitude_vector.${name}.weight`, 'lora_magnitude_vector', name, m);
      this.#magnitudes.set(name, p);
    }
    return p;
  }

  /** lora_B's bias of a lora_bias adapter; the same object on every call. */
  loraBBias(name: string, b: Tensor): Parameter {
    let p = this.#loraBBias.get(name);
    if (!p) {
      p = new Parameter(`lora_B.${name}.bias`, 'lora_B_bias', name, b);
      this.#loraBBias.set(name, p);
    }
    return p;
  }

  /** The base layer's bias (peft's key `base_layer.bias`); the same object while the tensor is the same. */
  baseBias(b: Tensor): Parameter {
    if (!this.#baseBias || this.#baseBias.data !== b) this.#baseBias = new Parameter('base_layer.bias', 'bias', '', b);
    return this.#baseBias;
  }

  /** Forgets an adapter's Parameters after clearing their grads (its tensors are being freed). */
  delete(name: string): void {
    this.#factors.get(name)?.forEach((p) => p.zeroGrad());
    this.#factors.delete(name);
    for (const m of [this.#magnitudes, this.#loraBBias]) {
      m.get(name)?.zeroGrad();
      m.delete(name);
    }
  }

  /** Clears every grad (the layer is being disposed). */
  clearGrads(): void {
    for (const pair of this.#factors.values()) pair.forEach((p) => p.zeroGrad());
    for (const p of [...this.#magnitudes.values(), ...this.#loraBBias.values()]) p.zeroGrad();
    this.#baseBias?.zeroGrad();
  }

  /** Adds freshly computed gradients into the grads of the Parameters handed out. */
  accumulate(grads: ReadonlyMap<string, AdapterGrads>, biasGrad?: Tensor): void {
    for (const [name, g] of grads) {
      const pair = this.#factors.get(name);
      if (pair) {
        pair[0].accumulateGrad(g.loraA);
        pair[1].accumulateGrad(g.loraB);
      }
      const m = this.#magnitudes.get(name);
      if (m && g.magnitude) m.accumulateGrad(g.magnitude);
      const lb = this.#loraBBias.get(name);
      if (lb && g.loraBBias) lb.accumulateGrad(g.loraBBias);
    }
    if (biasGrad && this.#baseBias) this.#baseBias.accumulateGrad(biasGrad);
  }
}
