/**
 * Training checkpoints that a run resumes from: beside the adapter files (peft's format) a
 * checkpoint directory holds training_state.json (the step, each parameter's name, shape, dtype
 * and optimizer step count, the optimizer's step count, the scheduler's step, every layer's
 * dropout seeds and forward counter, the loss log so far) and training_state.safetensors (each
 * trainable parameter's value in its own dtype, and its optimizer state in f32: AdamW's moments,
 * SGD's momentum buffer, the f32 master copy of a 16-bit parameter). Restoring all of it makes an
 * interrupted run continue bit for bit as the uninterrupted one.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LoraRangeError, LoraTypeError } from '../errors';
import { writeFileAtomicSync } from '../io/atomic';
import { SafetensorsFile } from '../io/safetensors';
import { writeSafetensors } from '../io/safetensors_writer';
import { Tensor } from '../tensor';
import { Optimizer } from './optimizer';
import { LRScheduler } from './schedule';

export const TRAINING_STATE_JSON = 'training_state.json';
export const TRAINING_STATE_TENSORS = 'training_state.safetensors';
const FORMAT = 1;

/** A layer's dropout generator state (LoraLayer.rngState()). */
export interface LayerRngState {
  seeds: Record<string, number>;
  counter: number;
}

/** What a model offers a checkpoint: its adapter files, and its dropout generators. */
export interface CheckpointModel {
  savePretrained(dir: string): unknown;
  rngState?(): Record<string, LayerRngState>;
  setRngState?(state: Record<string, LayerRngState>): unknown;
}

export interface LogRow {
  step: number;
  loss: number;
  lr: number;
  gradNorm?: number;
}

export interface TrainingState {
  /** Optimizer steps completed. */
  step: number;
  rows: LogRow[];
  checkpoints: number[];
}

interface StateJson {
  format: number;
  step: number;
  optimizer: { kind: string; steps: number; params: Array<{ name: string; shape: number[]; dtype: string; step: number | null; tensors: string[] }> };
  schedulerStep: number | null;
  rng: Record<string, LayerRngState> | null;
  rows: LogRow[];
  checkpoints: number[];
}

export function saveTrainingState(dir: string, s: TrainingState, optimizer: Optimizer, scheduler: LRScheduler | undefined, model: CheckpointModel): void {
  const exported = optimizer.exportState();
  const params = optimizer.parameters;
  const tensors = new Map<string, Tensor>();
  const json: StateJson = {
    format: FORMAT,
    step: s.step,
    optimizer: { kind: optimizer.constructor.name, steps: exported.steps, params: [] },
    schedulerStep: scheduler ? scheduler.currentStep : null,
    rng: model.rngState ? model.rngState() : null,
    rows: s.rows,
    checkpoints: s.checkpoints,
  };
  params.forEach((p, i) => {
    tensors.set(`param.${i}`, p.data);
    const st = exported.params[i];
    for (const [k, t] of Object.entries(st?.tensors ?? {})) tensors.set(`${k}.${i}`, t);
    json.optimizer.params.push({ name: p.name, shape: [...p.shape], dtype: p.data.dtype, step: st ? st.step : null, tensors: Object.keys(st?.tensors ?? {}) });
  });
  fs.mkdirSync(dir, { recursive: true });
  writeSafetensors(path.join(dir, TRAINING_STATE_TENSORS), tensors, { format: 'lorakit-training-state' });
  writeFileAtomicSync(path.join(dir, TRAINING_STATE_JSON), JSON.stringify(json, null, 1) + '\n');
}

/** Restores a checkpoint's state into the run's parameters, optimizer, scheduler and layers. */
export function loadTrainingState(dir: string, optimizer: Optimizer, scheduler: LRScheduler | undefined, model: CheckpointModel | null): TrainingState {
  if (typeof dir !== 'string' || dir.length === 0) throw new LoraTypeError('opts.resumeFrom: expected a checkpoint directory');
  const jsonPath = path.join(dir, TRAINING_STATE_JSON);
  if (!fs.existsSync(jsonPath))
    throw new LoraRangeError(`opts.resumeFrom: ${dir} has no ${TRAINING_STATE_JSON} (train writes it with checkpoint: { model, dir })`);
  let json: StateJson;
  try {
    json = JSON.parse(fs.readFileSync(jsonPath, 'utf8')) as StateJson;
  } catch (e) {
    throw new LoraTypeError(`${jsonPath}: not valid JSON (${(e as Error).message})`);
  }
  if (json.format !== FORMAT) throw new LoraRangeError(`${jsonPath}: format ${String(json.format)}, this lorakit reads ${FORMAT}`);
  const params = optimizer.parameters;
  const saved = json.optimizer?.params ?? [];
  if (json.optimizer.kind !== optimizer.constructor.name)
    throw new LoraRangeError(`opts.resumeFrom: the checkpoint's optimizer is ${json.optimizer.kind}, this run's ${optimizer.constructor.name}`);
  if (saved.length !== params.length) throw new LoraRangeError(`opts.resumeFrom: the checkpoint holds ${saved.length} parameters, the optimizer ${params.length}`);
  params.forEach((p, i) => {
    const q = saved[i];
    if (q.name !== p.name || q.shape.join() !== p.shape.join() || q.dtype !== p.data.dtype)
      throw new LoraRangeError(`opts.resumeFrom: parameter ${i} is ${q.name} ${JSON.stringify(q.shape)} ${q.dtype} in the checkpoint, ${p.name} ${JSON.stringify(p.shape)} ${p.data.dtype} here`);
  });
  if ((json.schedulerStep === null) !== (scheduler === undefined))
    throw new LoraRangeError(`opts.resumeFrom: the checkpoint was made ${json.schedulerStep === null ? 'without' : 'with'} a scheduler, this run ${scheduler ? 'has' : 'has none'}`);
  const file = SafetensorsFile.read(path.join(dir, TRAINING_STATE_TENSORS));
  const read: Tensor[] = [];
  const take = (n: string) => {
    const t = file.tensor(n);
    read.push(t);
    return t;
  };
  try {
    const state = saved.map((q, i) => (q.step === null ? null : { step: q.step, tensors: Object.fromEntries(q.tensors.map((k) => [k, take(`${k}.${i}`)])) }));
    optimizer.importState({ steps: json.optimizer.steps, params: state });
    params.forEach((p, i) => {
      const v = take(`param.${i}`);
      if (v.device === p.data.device) p.data.copyFrom(v);
      else {
        const moved = v.to({ device: p.data.device });
        read.push(moved);
        p.data.copyFrom(moved);
      }
    });
  } finally {
    read.forEach((t) => t.dispose());
  }
  if (scheduler) scheduler.setStep(json.schedulerStep!);
  if (json.rng) {
    if (!model?.setRngState) throw new LoraTypeError('opts.resumeFrom: the checkpoint holds dropout generator states; pass checkpoint: { model, dir } with the model');
    model.setRngState(json.rng);
  }
  return { step: json.step, rows: json.rows, checkpoints: json.checkpoints };
}
