/**
 * What a LoraModel trains besides the LoRA factors, as peft's _mark_only_adapters_as_trainable and
 * _set_trainable decide it, and peft's parameter counts (get_nb_trainable_parameters) from shapes.
 * - bias='all': every bias of the model is trainable; 'lora_only': the biases of the modules
 *   carrying that adapter. Only one adapter may have a bias mode; its biases train while it is
 *   active and not in inference mode.
 * - modules_to_save: the active adapter's copy of each such module trains, the original does not.
 */
import { LoraLayer } from '../layers/lora_layer';
import { Parameter } from '../parameter';
import { Tensor } from '../tensor';
import { numelOf } from '../validate';
import { ResolvedLoraConfig } from './config';
import { NormalizedModule, baseParamCount, loraShapes, shapeOf } from './modules';
import { ModulesToSaveWrapper } from './modules_to_save';

export interface TrainableView {
  readonly peftConfig: ReadonlyMap<string, ResolvedLoraConfig>;
  readonly active: readonly string[];
  readonly modules: ReadonlyMap<string, NormalizedModule>;
  /** Module name → adapter name → rank. */
  readonly slots: ReadonlyMap<string, ReadonlyMap<string, { r: number }>>;
  readonly saved: ReadonlyMap<string, ModulesToSaveWrapper>;
}

/** The modules whose bias trains now. */
export function trainableBiasModules(v: TrainableView): Set<string> {
  const out = new Set<string>();
  const owner = [...v.peftConfig].find(([, c]) => c.bias !== 'none');
  if (!owner) return out;
  const [adapter, c] = owner;
  if (!v.active.includes(adapter) || c.inferenceMode) return out;
  for (const m of v.modules.values()) {
    if (!m.bias || v.saved.has(m.name)) continue;
    if (c.bias === 'all' || v.slots.get(m.name)?.has(adapter)) out.add(m.name);
  }
  return out;
}

/** { trainable, total } as peft's get_nb_trainable_parameters counts them. */
export function countTrainable(v: TrainableView): { trainable: number; total: number } {
  let total = 0;
  let trainable = 0;
  const biases = trainableBiasModules(v);
  for (const m of v.modules.values()) {
    total += baseParamCount(m);
    if (biases.has(m.name)) trainable += numelOf(shapeOf(m.bias!));
    const copies = v.saved.get(m.name);
    if (copies) {
      const n = baseParamCount({ ...m, tiedTo: null });
      for (const a of copies.modulesToSave.keys()) {
        total += n;
        if (a === copies.activeAdapter && !v.peftConfig.get(a)!.inferenceMode) trainable += n;
      }
    }
    const slots = v.slots.get(m.name);
    if (!slots) continue;
    for (const [adapter, s] of slots) {
      const { A, B } = loraShapes(m, s.r);
      const cfg = v.peftConfig.get(adapter)!;
      // DoRA: a magnitude per output feature; lora_bias: a bias per output feature.
      const n = numelOf(A) + numelOf(B) + (cfg.useDora ? B[0] : 0) + (cfg.loraBias ? B[0] : 0);
      total += n;
      if (v.active.includes(adapter) && !cfg.inferenceMode) trainable += n;
    }
  }
  return { trainable, total };
}

/** A module's bias as a Tensor, or null when it has none or was given as a shape. */
export function biasTensor(m: NormalizedModule): Tensor | null {
  return m.bias instanceof Tensor ? m.bias : null;
}

/** peft's print_trainable_parameters line. */
export function trainableLine({ trainable, total }: { trainable: number; total: number }): string {
  const pct = total === 0 ? 0 : (100 * trainable) / total;
  return `trainable params: ${groupDigits(trainable)} || all params: ${groupDigits(total)} || trainable%: ${pct.toFixed(4)}`;
}

function groupDigits(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/**
 * LoraModel.namedParameters: per module in order, its LoRA layer's Parameters, the bias the bias
 * mode trains on a module without a layer (its Parameter kept in biasParams), its modulesToSave copy's.
 */
export function namedTrainableParameters(v: TrainableView, layers: ReadonlyMap<string, LoraLayer>, biasParams: Map<string, Parameter>): Array<[string, Parameter]> {
  const out: Array<[string, Parameter]> = [];
  const biases = trainableBiasModules(v);
  for (const m of v.modules.values()) {
    const layer = layers.get(m.name);
    if (layer) for (const p of layer.parameters()) out.push([`${m.name}.${p.name}`, p]);
    const b = biasTensor(m);
    if (!layer && b && biases.has(m.name)) {
      let p = biasParams.get(m.name);
      if (!p || p.data !== b) biasParams.set(m.name, (p = new Parameter('bias', 'bias', '', b)));
      out.push([`${m.name}.bias`, p]);
    }
    const w = v.saved.get(m.name);
    if (w) for (const p of w.parameters()) out.push([`${m.name}.${p.name}`, p]);
  }
  return out;
}
