/**
 * TrainableAdapters: what a LoRA layer hands an optimizer, as peft's requires_grad tensors of
 * tuners/lora/layer.py: lora_A, lora_B, lora_B's bias and the DoRA magnitude of each active adapter
 * that is not frozen (inference mode), and the base bias while peft's bias mode trains it. The
 * Parameter objects come from adapter_parameters.ts; LoraLayer (lora_layer.ts) builds on this.
 */
import { AdapterError } from '../errors';
import { Tensor } from '../tensor';
import { Parameter } from '../parameter';
import { checkBool } from '../validate';
import { AdapterDicts } from './adapter_dicts';
import { AdapterParameters } from './adapter_parameters';
import { AdapterGrads } from './options';

export abstract class TrainableAdapters extends AdapterDicts {
  /** Parameter objects handed out by parameters(); backward() accumulates into their grads. */
  readonly #parameters = new AdapterParameters();

  abstract get bias(): Tensor | null;

  /**
   * Whether the base bias is trained (peft's bias='all' / 'lora_only', which LoraModel sets):
   * parameters() then includes it and backward() gives it Σ_rows dy. Needs a layer with a bias.
   */
  get trainableBias(): boolean {
    return this._trainableBias;
  }
  set trainableBias(on: boolean) {
    checkBool(on, 'trainableBias');
    if (on && !this.bias) throw new AdapterError(`trainableBias: ${this.constructor.name} has no bias to train`);
    if (on && !this.supportsTrainableBias) throw new AdapterError(`trainableBias: a trainable base bias is supported on LoraLinear only, not on ${this.constructor.name}`);
    this._trainableBias = on;
  }
  /** True when the adapter gets no gradients (inferenceMode). */
  isFrozen(name: string): boolean {
    this.requireAdapter(name, 'name');
    return this._inferenceMode.get(name) === true;
  }

  /**
   * The trainable tensors: lora_A and lora_B of each active adapter that is not frozen (peft's
   * requires_grad). The same Parameter objects come back on every call; after one has been handed
   * out, backward() adds the adapter's gradients into its grad.
   */
  parameters(): Parameter[] {
    const out: Parameter[] = [];
    for (const name of this._activeAdapters) {
      if (this._inferenceMode.get(name) || !this._loraA.has(name)) continue;
      out.push(...this.adapterParameters(name));
      const m = this.magnitudeParameter(name);
      if (m) out.push(m);
      const lb = this.loraBBiasParameter(name);
      if (lb) out.push(lb);
    }
    const b = this.biasParameter();
    if (b) out.push(b);
    return out;
  }

  /** lora_B's bias of a lora_bias adapter as a Parameter (null for adapters without one). */
  loraBBiasParameter(name: string): Parameter | null {
    this.requireAdapter(name, 'name');
    const b = this._loraBBias.get(name);
    return b ? this.#parameters.loraBBias(name, b) : null;
  }

  /** The base bias as a Parameter (`base_layer.bias`) while trainableBias is set, else null. */
  biasParameter(): Parameter | null {
    const b = this.bias;
    return this._trainableBias && b ? this.#parameters.baseBias(b) : null;
  }

  /** [lora_A, lora_B] of one adapter as Parameters (frozen or not). */
  adapterParameters(name: string): [Parameter, Parameter] {
    this.requireAdapter(name, 'name');
    return this.#parameters.factors(name, this._loraA.get(name)!, this._loraB.get(name)!);
  }

  /** A DoRA adapter's magnitude vector as a Parameter (null for plain LoRA adapters). */
  magnitudeParameter(name: string): Parameter | null {
    this.requireAdapter(name, 'name');
    const m = this._loraMagnitude.get(name);
    return m ? this.#parameters.magnitude(name, m) : null;
  }

  /** Adds freshly computed adapter gradients into the grads of the Parameters handed out. */
  protected accumulateParameterGrads(grads: ReadonlyMap<string, AdapterGrads>, biasGrad?: Tensor): void {
    this.#parameters.accumulate(grads, biasGrad);
  }

  /** Forgets a deleted adapter's Parameters. */
  protected deleteParameters(name: string): void {
    this.#parameters.delete(name);
  }

  /** Drops the grads of the Parameters handed out (dispose). */
  protected clearParameterGrads(): void {
    this.#parameters.clearGrads();
  }

  /** Layer kinds whose backward gives the base bias its gradient override this. */
  protected get supportsTrainableBias(): boolean {
    return false;
  }
}
