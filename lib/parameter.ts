/**
 * Parameter: a trainable tensor and its accumulated gradient, as torch's nn.Parameter with .grad.
 * Layers hand out the same Parameter objects on every parameters() call, and backward() adds the
 * adapter gradients into them, so several backward passes before optimizer.step() accumulate.
 * Gradients are always f32, whatever the parameter's dtype.
 */
import { LoraTypeError, ShapeError, StateError, shapeStr } from './errors';
import { runOp } from './exec';
import { Tensor, requireFloatTensor } from './tensor';
import { checkFinite } from './validate';

/**
 * What a parameter is: a LoRA factor (LoRA+ gives lora_B and its bias a larger learning rate), a
 * DoRA magnitude, lora_B's bias (peft's lora_bias), a base bias made trainable (peft's bias='all' /
 * 'lora_only'), or a tensor of an adapter's copy of a module (peft's modules_to_save).
 */
export type ParameterRole = 'lora_A' | 'lora_B' | 'lora_magnitude_vector' | 'lora_B_bias' | 'bias' | 'modules_to_save';

export class Parameter {
  #grad: Tensor | null = null;

  constructor(
    /** peft-style key within its layer or module, e.g. 'lora_A.default.weight', 'base_layer.bias'. */
    readonly name: string,
    readonly role: ParameterRole,
    /** The adapter it belongs to ('' for a base bias, which belongs to the model). */
    readonly adapter: string,
    readonly data: Tensor,
  ) {}

  get shape(): readonly number[] {
    return this.data.shape;
  }
  get numel(): number {
    return this.data.numel;
  }

  /** The f32 gradient accumulated since the last zeroGrad(), or null if none. */
  get grad(): Tensor | null {
    return this.#grad;
  }

  /** grad += alpha·g (creates the gradient on first use). */
  accumulateGrad(g: Tensor, alpha = 1): void {
    requireFloatTensor(g, 'g', g instanceof Tensor ? g.device : 'cpu');
    checkFinite(alpha, 'alpha');
    if (this.data.disposed) throw new StateError(`${this.name}: the parameter tensor was disposed (adapter deleted?)`);
    if (g.shape.length !== this.data.shape.length || g.shape.some((d, i) => d !== this.data.shape[i]))
      throw new ShapeError(`g: expected shape ${shapeStr(this.data.shape)} (parameter ${this.name}), got ${shapeStr(g.shape)}`);
    if (g.device !== this.data.device)
      throw new LoraTypeError(`g: expected a ${this.data.device} tensor (parameter ${this.name}), got ${g.device}`);
    if (!this.#grad) this.#grad = Tensor.zeros(this.data.shape, { dtype: 'f32', device: this.data.device });
    runOp('accumulate', this.#grad.handle, g.handle, alpha);
  }

  /** Drops the gradient (torch's zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    this.#grad?.dispose();
    this.#grad = null;
  }

  toString(): string {
    return `Parameter(${this.name}, ${shapeStr(this.data.shape)}, ${this.data.dtype})`;
  }
}

/** Total number of elements (the "trainable params" count). */
export function countParameters(params: readonly Parameter[]): number {
  if (!Array.isArray(params) || params.some((p) => !(p instanceof Parameter))) throw new LoraTypeError('params: expected an array of Parameters');
  return params.reduce((n, p) => n + p.numel, 0);
}
