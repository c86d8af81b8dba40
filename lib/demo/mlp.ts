/**
 * The demo's network: fc1 → GELU → fc2, each a LoraLinear over frozen base weights (plain ones, or
 * the layers a LoraModel injected), with a hand-written backward that sends gradients to the
 * adapters of both layers.
 */
import { LoraLinear } from '../layers/linear';
import { QuantizedTensor } from '../quantized_tensor';
import { Tensor } from '../tensor';
import { gelu, geluBackward } from './gelu';

/** A layer over a float or a quantized base. */
export type DemoLinear = LoraLinear<Tensor | QuantizedTensor>;

export interface MlpWeights {
  w1: Tensor | QuantizedTensor; // [hidden, in]
  b1: Tensor;
  w2: Tensor | QuantizedTensor; // [out, hidden]
  b2: Tensor;
}

export class Mlp {
  readonly fc1: DemoLinear;
  readonly fc2: DemoLinear;
  #pre: Float32Array | null = null;
  #act: Tensor | null = null; // fc2's input, kept alive for its backward

  constructor(fc1: DemoLinear, fc2: DemoLinear) {
    this.fc1 = fc1;
    this.fc2 = fc2;
  }

  static fromWeights(w: MlpWeights): Mlp {
    return new Mlp(new LoraLinear<Tensor | QuantizedTensor>({ weight: w.w1, bias: w.b1 }), new LoraLinear<Tensor | QuantizedTensor>({ weight: w.w2, bias: w.b2 }));
  }

  /** The modules as LoraModel takes them. */
  static modules(w: MlpWeights): Array<{ name: string; kind: 'linear'; weight: Tensor | QuantizedTensor; bias: Tensor }> {
    return [
      { name: 'fc1', kind: 'linear', weight: w.w1, bias: w.b1 },
      { name: 'fc2', kind: 'linear', weight: w.w2, bias: w.b2 },
    ];
  }

  forward(x: Tensor): Tensor {
    const h = this.fc1.forward(x);
    const { y: a, pre } = gelu(h);
    h.dispose();
    this.#pre = pre;
    const y = this.fc2.forward(a);
    this.#act?.dispose();
    this.#act = a;
    return y;
  }

  /** Backward of the last forward: the adapters' Parameters receive their gradients. */
  backward(dy: Tensor): void {
    const r2 = this.fc2.backward(dy);
    const dh = geluBackward(r2.dx, this.#pre!);
    r2.dx.dispose();
    disposeGrads(r2.grads);
    const r1 = this.fc1.backward(dh);
    dh.dispose();
    r1.dx.dispose();
    disposeGrads(r1.grads);
  }

  train(mode = true): this {
    this.fc1.train(mode);
    this.fc2.train(mode);
    return this;
  }
}

function disposeGrads(g: Map<string, { loraA: Tensor; loraB: Tensor }>): void {
  for (const v of g.values()) {
    v.loraA.dispose();
    v.loraB.dispose();
  }
}
