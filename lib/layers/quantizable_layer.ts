/**
 * QuantizableLayer: the merge side of a LoraLayer whose base weight may be a QuantizedTensor
 * (LoraLinear). Over a quantized base, merge / unmerge / switchMerged run quant_merge.ts (peft's
 * bnb merge: dequantise, add ΔW in f32, re-quantize; exact by default through byte records);
 * over a float base they are LoraLayer's. mergeAndUnload gives the merged weight as a float copy.
 */
import { AdapterError, LoraTypeError } from '../errors';
import { KernelSteps } from '../exec';
import { QuantizedTensor, isQuantizedTensor } from '../quantized_tensor';
import { Tensor } from '../tensor';
import { LoraLayer, MergeOptions } from './lora_layer';
import { MergeAndUnloadOptions, QuantMergeHost, QuantMergeRecords, mergedFloatWeightSteps, quantMergeSteps, quantUnmergeSteps } from './quant_merge';

export abstract class QuantizableLayer extends LoraLayer {
  /** Over a quantized base: the old words of the bytes each exact merge changed. */
  readonly #quantRecords = new QuantMergeRecords();

  /** The QuantizedTensor of a quantized base; null for a float one. */
  get quantizedWeight(): QuantizedTensor | null {
    const w = this.weight;
    return isQuantizedTensor(w) ? w : null;
  }

  /** Over a quantized base: peft's bnb merge (dequantise, add ΔW in f32, re-quantize), exact by default. */
  override merge(opts: MergeOptions = {}): this {
    if (!this.quantizedWeight) return super.merge(opts);
    this.runLayerSync('merge', quantMergeSteps(this.mergeHost(), opts));
    return this;
  }

  override async mergeAsync(opts: MergeOptions = {}): Promise<this> {
    if (!this.quantizedWeight) return super.mergeAsync(opts);
    await this.runLayerAsync('merge', quantMergeSteps(this.mergeHost(), opts));
    return this;
  }

  protected override *unmergeSteps(): KernelSteps<this> {
    if (!this.quantizedWeight) return yield* super.unmergeSteps();
    yield* quantUnmergeSteps(this.mergeHost());
    return this;
  }

  /** Over a quantized base: unmerge(), then merge({ adapterNames: names }). */
  override switchMerged(names: readonly string[]): this {
    if (!this.quantizedWeight) return super.switchMerged(names);
    this.checkSwitchNames(names);
    this.unmerge();
    return this.merge({ adapterNames: [...names] });
  }

  override async switchMergedAsync(names: readonly string[]): Promise<this> {
    if (!this.quantizedWeight) return super.switchMergedAsync(names);
    this.checkSwitchNames(names);
    await this.unmergeAsync();
    return this.mergeAsync({ adapterNames: [...names] });
  }

  override get mergeSideInfoBytes(): number {
    return super.mergeSideInfoBytes + this.#quantRecords.bytes;
  }

  override dispose(): void {
    super.dispose();
    this.#quantRecords.clear();
  }

  /**
   * peft's merge_and_unload for one layer: W + Σ ΔW (the active or named adapters not merged yet) as
   * a new float tensor in opts.dtype (default f32); a quantized base is dequantised. The layer is unchanged.
   */
  mergeAndUnload(opts: MergeAndUnloadOptions = {}): Tensor {
    return this.runLayerSync('mergeAndUnload', mergedFloatWeightSteps(this.mergeHost(), opts));
  }

  /** Frees what a merge cached for a plain unmerge (a DoRA norm) once an exact record undid it. */
  protected dropMergeCache(_name: string): void {}

  private checkSwitchNames(names: readonly string[]): void {
    if (!Array.isArray(names)) throw new LoraTypeError('names: expected an array of adapter names');
    names.forEach((n, i) => this.requireAdapter(n, `names[${i}]`));
    if (new Set(names).size !== names.length) throw new AdapterError(`names: duplicate adapter names in [${names.join(', ')}]`);
  }

  private mergeHost(): QuantMergeHost {
    return {
      weight: this.weight,
      bias: this.bias,
      kind: this.constructor.name,
      merged: this._mergedAdapters,
      active: this._activeAdapters,
      records: this.#quantRecords,
      requireAdapter: (n, arg) => this.requireAdapter(n, arg),
      loraBBias: (n) => this._loraBBias.get(n),
      scaling: (n) => this._scaling.get(n)!,
      deltaSteps: (n, sign, W, out) => this.deltaSteps(n, sign, W, out),
      dropMergeCache: (n) => this.dropMergeCache(n),
    };
  }
}
