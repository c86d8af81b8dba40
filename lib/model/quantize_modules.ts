/**
 * Quantized bases for a LoraModel (as transformers' load_in_4bit / load_in_8bit before peft wraps
 * the model): fromPretrained's `quantize` option turns the float weight of every linear module,
 * targeted or not, into a QuantizedTensor on load, except the modules named in `skip` (as
 * llm_int8_skip_modules). conv1d (GPT-2's [in, out] Conv1D), embedding, conv2d and 'other' modules
 * stay float. mergeAndUnload gives quantized modules back as float weights (floatMergedWeights).
 */
import { FloatDType } from '../dtype';
import { LoraTypeError, ShapeError } from '../errors';
import { LoraLayer } from '../layers/lora_layer';
import { LoraLinear } from '../layers/linear';
import { QuantFormatName, QuantizedTensor, checkQuantFormat, isQuantizedTensor } from '../quantized_tensor';
import { Tensor } from '../tensor';
import { checkBool, checkInt, checkOptions } from '../validate';
import { ModuleSpec } from './modules';

/** LoraModel.mergeAndUnload's options: dtype gives every float tensor of the result that dtype (quantized modules come back as f32 without it). */
export interface ModelMergeAndUnloadOptions {
  adapterNames?: string[];
  safeMerge?: boolean;
  dtype?: FloatDType;
}

export interface QuantizeOnLoad {
  format: QuantFormatName;
  blockSize?: number;
  doubleQuant?: boolean;
  /** Module names (or '.'-suffixes such as 'lm_head') left in float. */
  skip?: string[];
}

export function checkQuantizeOnLoad(v: unknown, name: string): QuantizeOnLoad {
  const o = checkOptions(v, ['format', 'blockSize', 'doubleQuant', 'skip'], name);
  if (o.format === undefined) throw new LoraTypeError(`${name}.format: required (one of int8, nf4, fp4, q8_0, q4_0, q4_k, q6_k)`);
  const format = checkQuantFormat(o.format, `${name}.format`);
  const out: QuantizeOnLoad = { format };
  if (o.blockSize !== undefined) out.blockSize = checkInt(o.blockSize, `${name}.blockSize`, 1);
  if (o.doubleQuant !== undefined) out.doubleQuant = checkBool(o.doubleQuant, `${name}.doubleQuant`);
  if (o.skip !== undefined) {
    if (!Array.isArray(o.skip) || !o.skip.every((s) => typeof s === 'string' && s.length > 0))
      throw new LoraTypeError(`${name}.skip: expected an array of module names`);
    out.skip = [...o.skip];
  }
  return out;
}

function skipped(name: string, skip: readonly string[]): boolean {
  return skip.some((s) => name === s || name.endsWith(`.${s}`));
}

/**
 * Copies of the specs with each linear module's float weight quantized (on its device); `made`
 * holds the new QuantizedTensors, which the model owns (the caller's float tensors are untouched).
 */
export function quantizeModules(specs: readonly ModuleSpec[], q: QuantizeOnLoad): { specs: ModuleSpec[]; made: QuantizedTensor[] } {
  const made: QuantizedTensor[] = [];
  const byTensor = new Map<Tensor, QuantizedTensor>(); // tied weights stay one tensor
  try {
    const out = specs.map((s) => {
      if (s.kind !== 'linear' || !(s.weight instanceof Tensor) || skipped(s.name, q.skip ?? [])) return { ...s };
      let qt = byTensor.get(s.weight);
      if (!qt) {
        try {
          qt = QuantizedTensor.quantize(s.weight, q.format, { blockSize: q.blockSize, doubleQuant: q.doubleQuant });
        } catch (e) {
          if ((e as Error).name !== 'ShapeError') throw e;
          throw new ShapeError(`opts.quantize: module '${s.name}': ${(e as Error).message} (or list it in opts.quantize.skip)`);
        }
        made.push(qt);
        byTensor.set(s.weight, qt);
      }
      return { ...s, weight: qt };
    });
    return { specs: out, made };
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

/**
 * mergeAndUnload over quantized layers: each one's W + Σ ΔW as a float tensor in dtype (default
 * f32), by module name, computed before any merge touches the quantized bytes.
 */
export function floatMergedWeights(layers: ReadonlyMap<string, LoraLayer>, names: readonly string[], dtype: FloatDType | undefined, safeMerge: boolean): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  try {
    for (const [mod, layer] of layers) {
      if (!(layer instanceof LoraLinear) || !isQuantizedTensor(layer.weight)) continue;
      const own = names.filter((n) => layer.adapterNames.includes(n));
      out.set(mod, (layer as LoraLinear<QuantizedTensor>).mergeAndUnload({ dtype: dtype ?? 'f32', adapterNames: own, safeMerge }));
    }
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}
