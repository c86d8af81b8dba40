/**
 * train(): the optimisation loop around a user step function. Each step runs the step function
 * gradientAccumulationSteps times (forward, loss, backward: gradients add up in the parameters),
 * averages the gradients, optionally clips them, steps the optimizer and the scheduler and clears
 * the gradients. It shows a progress bar on a TTY, keeps a loss log (CSV, written atomically at
 * every checkpoint and at the end) and calls `checkpoint` every checkpointEvery steps. With
 * checkpoint: { model, dir } a checkpoint also holds the training state (resume.ts), and
 * resumeFrom continues such a run bit for bit (same steps, step function, optimizer and scheduler).
 * It is async and yields to the event loop between steps, so a long run does not block Node.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LoraRangeError, LoraTypeError } from '../errors';
import { writeFileAtomicSync } from '../io/atomic';
import { runOp } from '../exec';
import { checkFinite, checkInt, checkOptions } from '../validate';
import { Optimizer, clipGradNorm } from './optimizer';
import { ProgressBar, ProgressStream } from './progress';
import { CheckpointModel, loadTrainingState, saveTrainingState } from './resume';
import { LRScheduler } from './schedule';

export interface CheckpointTarget {
  /** A LoraModel: its adapters (peft's format) and its layers' dropout state go into each checkpoint. */
  model: CheckpointModel;
  dir: string;
}

export interface StepContext {
  /** 0-based optimizer step. */
  step: number;
  /** 0-based micro-batch within the step (gradient accumulation). */
  microStep: number;
}

export interface StepLog {
  step: number;
  loss: number;
  /** Learning rate of the first parameter group used by this step. */
  lr: number;
  /** Global gradient norm before clipping (only with maxGradNorm). */
  gradNorm?: number;
}

export interface TrainOptions {
  optimizer: Optimizer;
  steps: number;
  /** Runs forward, loss and backward for one micro-batch and returns the loss value. */
  step: (ctx: StepContext) => number | Promise<number>;
  scheduler?: LRScheduler;
  /** Micro-batches per optimizer step; their gradients are averaged (default 1). */
  gradientAccumulationSteps?: number;
  maxGradNorm?: number;
  /** Progress bar: default on when the stream (stderr) is a TTY. */
  progress?: boolean;
  progressStream?: ProgressStream;
  /** CSV loss log (step,loss,lr). */
  logFile?: string;
  /** Checkpoint every N steps. */
  checkpointEvery?: number;
  /**
   * A function (step) => void, or { model, dir }: model.savePretrained(`<dir>/checkpoint-<step>`)
   * writes the adapters in peft's format (LoraModel does).
   */
  checkpoint?: ((step: number) => void | Promise<void>) | CheckpointTarget;
  /** Called after every step. */
  onStep?: (log: StepLog) => void;
  /** Stops after the current step when it returns true. */
  shouldStop?: () => boolean;
  /**
   * A checkpoint directory (`<dir>/checkpoint-<step>`) written with checkpoint: { model, dir }: the
   * parameters, optimizer state, scheduler step, dropout generators and loss log are restored and
   * the run goes on from that step to `steps`.
   */
  resumeFrom?: string;
}

export interface TrainResult {
  /** Mean micro-batch loss of each optimizer step. */
  losses: number[];
  steps: number;
  seconds: number;
  checkpoints: number[];
}

const TRAIN_KEYS = [
  'optimizer', 'steps', 'step', 'scheduler', 'gradientAccumulationSteps', 'maxGradNorm', 'progress', 'progressStream',
  'logFile', 'checkpointEvery', 'checkpoint', 'onStep', 'shouldStop', 'resumeFrom',
];

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const o = checkOptions(opts, TRAIN_KEYS, 'opts') as unknown as TrainOptions;
  if (!(o.optimizer instanceof Optimizer)) throw new LoraTypeError('opts.optimizer: expected an Optimizer (AdamW or SGD)');
  if (typeof o.step !== 'function') throw new LoraTypeError('opts.step: expected a function ({ step, microStep }) => loss');
  const steps = checkInt(o.steps, 'opts.steps', 0);
  const accum = checkInt(o.gradientAccumulationSteps ?? 1, 'opts.gradientAccumulationSteps', 1);
  const maxNorm = o.maxGradNorm === undefined ? undefined : checkFinite(o.maxGradNorm, 'opts.maxGradNorm');
  if (maxNorm !== undefined && maxNorm <= 0) throw new LoraRangeError(`opts.maxGradNorm: expected > 0, got ${maxNorm}`);
  const ckEvery = o.checkpointEvery === undefined ? 0 : checkInt(o.checkpointEvery, 'opts.checkpointEvery', 1);
  const target = checkpointTarget(o.checkpoint);
  if (ckEvery && !o.checkpoint)
    throw new LoraTypeError('opts.checkpoint: a function (step) => void or { model, dir } is required with checkpointEvery');
  if (o.scheduler !== undefined && (!(o.scheduler instanceof LRScheduler) || o.scheduler.optimizer !== o.optimizer))
    throw new LoraTypeError('opts.scheduler: expected an LRScheduler built on opts.optimizer');
  if (o.logFile !== undefined && (typeof o.logFile !== 'string' || !o.logFile))
    throw new LoraTypeError('opts.logFile: expected a file path');

  const optimizer = o.optimizer;
  const params = optimizer.parameters;
  const bar = new ProgressBar(steps, o.progressStream ?? process.stderr, o.progress);
  const rows: StepLog[] = [];
  const losses: number[] = [];
  const checkpoints: number[] = [];
  const t0 = performance.now();
  const flushLog = () => {
    if (!o.logFile) return;
    fs.mkdirSync(path.dirname(path.resolve(o.logFile)), { recursive: true });
    const body = rows.map((r) => `${r.step},${r.loss},${r.lr}${r.gradNorm !== undefined ? ',' + r.gradNorm : ''}`).join('\n');
    writeFileAtomicSync(o.logFile, `step,loss,lr${maxNorm !== undefined ? ',grad_norm' : ''}\n${body}${rows.length ? '\n' : ''}`);
  };

  const saveCheckpoint = async (step: number) => {
    if (typeof o.checkpoint === 'function') return o.checkpoint(step);
    const dir = path.join(target!.dir, `checkpoint-${step}`);
    target!.model.savePretrained(dir);
    saveTrainingState(dir, { step, rows, checkpoints: [...checkpoints, step] }, optimizer, o.scheduler, target!.model);
  };

  let start = 0;
  if (o.resumeFrom !== undefined) {
    const s = loadTrainingState(o.resumeFrom, optimizer, o.scheduler, target?.model ?? null);
    start = s.step;
    rows.push(...s.rows);
    losses.push(...s.rows.map((r) => r.loss));
    checkpoints.push(...s.checkpoints);
  }
  optimizer.zeroGrad();
  try {
    for (let step = start; step < steps; step++) {
      let sum = 0;
      for (let micro = 0; micro < accum; micro++) {
        const loss = await o.step({ step, microStep: micro });
        if (typeof loss !== 'number' || !Number.isFinite(loss))
          throw new LoraRangeError(`step ${step}: the step function returned a non-finite loss (${String(loss)})`);
        sum += loss;
      }
      if (accum > 1)
        for (const p of params)
          if (p.grad) runOp('scaleInplace', p.grad.handle, 1 / accum);
      const gradNorm = maxNorm !== undefined ? clipGradNorm(params, maxNorm) : undefined;
      const lr = optimizer.paramGroups[0].lr;
      optimizer.step();
      o.scheduler?.step();
      optimizer.zeroGrad();
      const log: StepLog = { step: step + 1, loss: sum / accum, lr, ...(gradNorm !== undefined ? { gradNorm } : {}) };
      rows.push(log);
      losses.push(log.loss);
      o.onStep?.(log);
      bar.update(step + 1, `loss ${log.loss.toExponential(3)}`);
      if (ckEvery && (step + 1) % ckEvery === 0) {
        flushLog();
        await saveCheckpoint(step + 1);
        checkpoints.push(step + 1);
      }
      if (o.shouldStop?.()) break;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  } finally {
    optimizer.zeroGrad();
    flushLog();
  }
  bar.finish(losses.length ? `loss ${losses[losses.length - 1].toExponential(3)}` : '');
  return { losses, steps: losses.length, seconds: (performance.now() - t0) / 1000, checkpoints };
}

/** The { model, dir } form of opts.checkpoint, checked; null for a function or none. */
function checkpointTarget(c: TrainOptions['checkpoint']): CheckpointTarget | null {
  if (c === undefined || typeof c === 'function') return null;
  checkOptions(c, ['model', 'dir'], 'opts.checkpoint');
  const { model, dir } = c as CheckpointTarget;
  if (!model || typeof model.savePretrained !== 'function')
    throw new LoraTypeError('opts.checkpoint.model: expected an object with savePretrained(dir) (a LoraModel)');
  if (typeof dir !== 'string' || !dir) throw new LoraTypeError('opts.checkpoint.dir: expected a directory path');
  return c;
}
