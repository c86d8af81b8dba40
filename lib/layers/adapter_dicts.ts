/**
 * The per-adapter state of a LoRA layer as peft keeps it (tuners/lora/layer.py): one map per
 * attribute, keyed by adapter name, the read-only views of them and the adapter-name check.
 * TrainableAdapters (trainable_adapters.ts) and LoraLayer (lora_layer.ts) build on this.
 */
import { AdapterError, LoraTypeError } from '../errors';
import { Tensor } from '../tensor';

export abstract class AdapterDicts {
  protected readonly _r = new Map<string, number>();
  protected readonly _loraAlpha = new Map<string, number>();
  protected readonly _scaling = new Map<string, number>();
  protected readonly _loraDropout = new Map<string, number>();
  protected readonly _useRslora = new Map<string, boolean>();
  protected readonly _loraA = new Map<string, Tensor>();
  protected readonly _loraB = new Map<string, Tensor>();
  protected readonly _inferenceMode = new Map<string, boolean>();
  protected readonly _seed = new Map<string, number>();
  protected readonly _useDora = new Map<string, boolean>();
  protected readonly _loraMagnitude = new Map<string, Tensor>();
  /** peft's lora_bias: lora_B's bias [out] of the adapters that have one. */
  protected readonly _loraBBias = new Map<string, Tensor>();
  /** peft's bias='all' / 'lora_only': backward gives the base bias a gradient. */
  protected _trainableBias = false;
  protected _activeAdapters: string[] = [];
  protected _disableAdapters = false;
  protected _mergedAdapters: string[] = [];
  protected _training = true;

  get r(): ReadonlyMap<string, number> {
    return this._r;
  }
  get loraAlpha(): ReadonlyMap<string, number> {
    return this._loraAlpha;
  }
  get scaling(): ReadonlyMap<string, number> {
    return this._scaling;
  }
  get loraDropout(): ReadonlyMap<string, number> {
    return this._loraDropout;
  }
  get useRslora(): ReadonlyMap<string, boolean> {
    return this._useRslora;
  }
  get loraA(): ReadonlyMap<string, Tensor> {
    return this._loraA;
  }
  get loraB(): ReadonlyMap<string, Tensor> {
    return this._loraB;
  }
  get useDora(): ReadonlyMap<string, boolean> {
    return this._useDora;
  }
  /** DoRA magnitude vectors [out], keyed by adapter name (peft's lora_magnitude_vector). */
  get loraMagnitude(): ReadonlyMap<string, Tensor> {
    return this._loraMagnitude;
  }
  /** lora_B's bias [out] of each lora_bias adapter (peft's lora_B[name].bias). */
  get loraBBias(): ReadonlyMap<string, Tensor> {
    return this._loraBBias;
  }
  get activeAdapters(): readonly string[] {
    return this._activeAdapters.slice();
  }
  get mergedAdapters(): readonly string[] {
    return this._mergedAdapters.slice();
  }
  get merged(): boolean {
    return this._mergedAdapters.length > 0;
  }
  get disableAdapters(): boolean {
    return this._disableAdapters;
  }
  get training(): boolean {
    return this._training;
  }
  /** Names of all adapters on this layer, in insertion order. */
  get adapterNames(): string[] {
    return [...this._r.keys()];
  }

  protected requireAdapter(name: unknown, argName: string): string {
    if (typeof name !== 'string') throw new LoraTypeError(`${argName}: expected an adapter name (string), got ${typeof name}`);
    if (!this._r.has(name))
      throw new AdapterError(`${argName}: unknown adapter '${name}' (this layer has: ${[...this._r.keys()].join(', ') || 'none'})`);
    return name;
  }
}
