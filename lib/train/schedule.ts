/**
 * Learning-rate schedules as multipliers of each group's initialLr, with transformers' formulas
 * (get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup). As torch's LambdaLR, the
 * constructor applies factor(0), and each step() after optimizer.step() moves to the next step.
 */
import { LoraRangeError, LoraTypeError } from '../errors';
import { checkFinite, checkInt, checkOptions } from '../validate';
import { Optimizer } from './optimizer';

/** step/warmup during warm-up, then linear decay to 0 at totalSteps. */
export function linearWarmupDecayFactor(step: number, warmupSteps: number, totalSteps: number): number {
  checkFinite(step, 'step');
  checkFinite(warmupSteps, 'warmupSteps');
  checkFinite(totalSteps, 'totalSteps');
  if (step < warmupSteps) return step / Math.max(1, warmupSteps);
  return Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmupSteps));
}

/** step/warmup during warm-up, then a half cosine (numCycles 0.5) from 1 to 0 at totalSteps. */
export function cosineWarmupFactor(step: number, warmupSteps: number, totalSteps: number, numCycles = 0.5): number {
  checkFinite(step, 'step');
  checkFinite(warmupSteps, 'warmupSteps');
  checkFinite(totalSteps, 'totalSteps');
  checkFinite(numCycles, 'numCycles');
  if (step < warmupSteps) return step / Math.max(1, warmupSteps);
  const progress = (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * numCycles * 2 * progress)));
}

export class LRScheduler {
  #step = 0;

  constructor(
    readonly optimizer: Optimizer,
    readonly factor: (step: number) => number,
  ) {
    if (!(optimizer instanceof Optimizer)) throw new LoraTypeError('optimizer: expected an Optimizer (AdamW or SGD)');
    if (typeof factor !== 'function') throw new LoraTypeError('factor: expected a function (step) => multiplier');
    this.apply();
  }

  /** Steps taken so far (torch's last_epoch). */
  get currentStep(): number {
    return this.#step;
  }

  /** The learning rate of each group for the next optimizer step. */
  get lastLr(): number[] {
    return this.optimizer.paramGroups.map((g) => g.lr);
  }

  step(): void {
    this.#step++;
    this.apply();
  }

  /** Jumps to step n (a resumed run): the groups' learning rates become those of step n. */
  setStep(n: number): void {
    this.#step = checkInt(n, 'n', 0);
    this.apply();
  }

  private apply(): void {
    const f = this.factor(this.#step);
    if (!Number.isFinite(f) || f < 0) throw new LoraRangeError(`schedule factor at step ${this.#step}: expected a finite value >= 0, got ${f}`);
    for (const g of this.optimizer.paramGroups) g.lr = g.initialLr * f;
  }
}

export interface WarmupScheduleOptions {
  warmupSteps?: number;
  totalSteps: number;
}

function checkSchedule(opts: WarmupScheduleOptions, extra: string[] = []): { warmup: number; total: number } {
  const o = checkOptions(opts, ['warmupSteps', 'totalSteps', ...extra], 'opts');
  if (o.totalSteps === undefined) throw new LoraTypeError('opts.totalSteps: required');
  const total = checkInt(o.totalSteps, 'opts.totalSteps', 1);
  const warmup = checkInt(o.warmupSteps ?? 0, 'opts.warmupSteps', 0, total);
  return { warmup, total };
}

/** Linear warm-up from 0, then linear decay to 0 at totalSteps. */
export function linearSchedule(optimizer: Optimizer, opts: WarmupScheduleOptions): LRScheduler {
  const { warmup, total } = checkSchedule(opts);
  return new LRScheduler(optimizer, (s) => linearWarmupDecayFactor(s, warmup, total));
}

/** Linear warm-up from 0, then cosine decay to 0 at totalSteps (numCycles 0.5 by default). */
export function cosineSchedule(optimizer: Optimizer, opts: WarmupScheduleOptions & { numCycles?: number }): LRScheduler {
  const { warmup, total } = checkSchedule(opts, ['numCycles']);
  const cycles = checkFinite(opts.numCycles ?? 0.5, 'opts.numCycles');
  return new LRScheduler(optimizer, (s) => cosineWarmupFactor(s, warmup, total, cycles));
}
