/**
 * Optimizers for adapter parameters over the native fused step ops (adamwStep, sgdStep), on the
 * parameters' device.
 * State (moments, momentum buffers, and an f32 master copy for f16/bf16 parameters) is f32.
 * Parameter groups carry their own learning rate; a scheduler scales every group's initialLr.
 */
import { LoraRangeError, LoraTypeError, StateError } from '../errors';
import { KernelSteps, runAsync, runOp, runSync, step } from '../exec';
import { Parameter } from '../parameter';
import { Tensor } from '../tensor';
import { checkBool, checkFinite, checkOptions } from '../validate';

export interface ParamGroupSpec {
  params: Parameter[];
  /** Overrides the optimizer's lr for this group. */
  lr?: number;
  /** Overrides the optimizer's weightDecay for this group. */
  weightDecay?: number;
}

export interface ParamGroup {
  readonly params: readonly Parameter[];
  /** The learning rate used by the next step (schedulers set it). */
  lr: number;
  /** The learning rate the group started with; schedulers multiply it. */
  readonly initialLr: number;
  weightDecay: number;
}

export interface OptimizerBaseOptions {
  lr?: number;
  weightDecay?: number;
  /**
   * LoRA+ (Hayou et al. 2024, peft's create_loraplus_optimizer): lora_B parameters get
   * lr·loraPlusLrRatio. Only applies when params is a flat list.
   */
  loraPlusLrRatio?: number;
}

function checkNonNeg(v: unknown, name: string): number {
  const x = checkFinite(v, name);
  if (x < 0) throw new LoraRangeError(`${name}: expected >= 0, got ${x}`);
  return x;
}

function buildGroups(
  params: Parameter[] | ParamGroupSpec[],
  lr: number,
  weightDecay: number,
  loraPlusLrRatio: number | undefined,
): ParamGroup[] {
  if (!Array.isArray(params) || params.length === 0)
    throw new LoraTypeError('params: expected a non-empty array of Parameters or parameter groups ({ params, lr?, weightDecay? })');
  const specs: ParamGroupSpec[] = [];
  if (params.every((p) => p instanceof Parameter)) {
    const list = params as Parameter[];
    if (loraPlusLrRatio === undefined) specs.push({ params: list });
    else {
      const isB = (p: Parameter) => p.role === 'lora_B' || p.role === 'lora_B_bias';
      const a = list.filter((p) => !isB(p));
      const b = list.filter(isB);
      if (a.length) specs.push({ params: a });
      if (b.length) specs.push({ params: b, lr: lr * loraPlusLrRatio });
    }
  } else {
    if (loraPlusLrRatio !== undefined)
      throw new LoraTypeError('opts.loraPlusLrRatio: only with a flat list of Parameters (parameter groups set their own lr)');
    (params as unknown[]).forEach((g, i) => {
      if (g === null || typeof g !== 'object' || !Array.isArray((g as ParamGroupSpec).params))
        throw new LoraTypeError(`params[${i}]: expected a Parameter or a group { params: Parameter[], lr?, weightDecay? }`);
      checkOptions(g, ['params', 'lr', 'weightDecay'], `params[${i}]`);
      specs.push(g as ParamGroupSpec);
    });
  }
  const seen = new Set<Parameter>();
  return specs.map((s, gi) => {
    s.params.forEach((p, i) => {
      if (!(p instanceof Parameter)) throw new LoraTypeError(`params[${gi}].params[${i}]: expected a Parameter (from layer.parameters())`);
      if (seen.has(p)) throw new LoraTypeError(`params: ${p.name} appears more than once`);
      seen.add(p);
    });
    const glr = s.lr === undefined ? lr : checkNonNeg(s.lr, `params[${gi}].lr`);
    const gwd = s.weightDecay === undefined ? weightDecay : checkNonNeg(s.weightDecay, `params[${gi}].weightDecay`);
    return { params: s.params.slice(), lr: glr, initialLr: glr, weightDecay: gwd };
  });
}

/** One parameter's optimizer state: its f32 tensors by kind (exp_avg, master, ...) and its step count. */
export interface ParamState {
  step: number;
  tensors: Record<string, Tensor>;
}

export abstract class Optimizer {
  readonly paramGroups: ParamGroup[];
  #steps = 0;
  #disposed = false;

  protected constructor(params: Parameter[] | ParamGroupSpec[], base: Required<Omit<OptimizerBaseOptions, 'loraPlusLrRatio'>> & { loraPlusLrRatio?: number }) {
    if (base === null || typeof base !== 'object') throw new LoraTypeError('Optimizer: abstract; construct AdamW or SGD');
    if (!Array.isArray(params)) throw new LoraTypeError('params: expected an array of Parameters or parameter groups');
    const ratio = base.loraPlusLrRatio === undefined ? undefined : checkNonNeg(base.loraPlusLrRatio, 'opts.loraPlusLrRatio');
    this.paramGroups = buildGroups(params, checkNonNeg(base.lr, 'opts.lr'), checkNonNeg(base.weightDecay, 'opts.weightDecay'), ratio);
  }

  /** Number of step() calls so far. */
  get stepCount(): number {
    return this.#steps;
  }

  /** Every parameter, in group order. */
  get parameters(): Parameter[] {
    return this.paramGroups.flatMap((g) => g.params);
  }

  /**
   * Updates every parameter that has a gradient; parameters without one are skipped (as torch).
   * StateError while async work (a forwardAsync, say) still uses a parameter.
   */
  step(): void {
    runSync(this.stepSteps());
  }

  /** step() with the kernels on a libuv thread; the parameters are busy until it settles. */
  stepAsync(): Promise<void> {
    return runAsync(this.stepSteps());
  }

  private *stepSteps(): KernelSteps<void> {
    if (this.#disposed) throw new StateError('step: the optimizer was disposed');
    for (const g of this.paramGroups) {
      for (const p of g.params) {
        if (!p.grad) continue;
        if (p.data.disposed) throw new StateError(`step: parameter ${p.name} was disposed (adapter deleted?)`);
        yield* this.updateSteps(p, p.grad, g);
      }
    }
    this.#steps++;
  }

  /**
   * The state of each parameter (null: none yet), in `parameters` order, and the step count; the
   * tensors are the live ones (a training checkpoint writes them).
   */
  exportState(): { steps: number; params: Array<ParamState | null> } {
    if (this.#disposed) throw new StateError('exportState: the optimizer was disposed');
    return { steps: this.#steps, params: this.parameters.map((p) => this.paramState(p)) };
  }

  /** Restores exportState()'s content (tensors copied into fresh f32 state on each parameter's device). */
  importState(s: { steps: number; params: ReadonlyArray<{ step: number; tensors: Record<string, Tensor> } | null> }): void {
    if (this.#disposed) throw new StateError('importState: the optimizer was disposed');
    const params = this.parameters;
    if (!s || !Array.isArray(s.params) || s.params.length !== params.length)
      throw new LoraRangeError(`state: expected the state of ${params.length} parameters, got ${Array.isArray(s?.params) ? s.params.length : typeof s?.params}`);
    const steps = checkFinite(s.steps, 'state.steps');
    this.freeState();
    s.params.forEach((ps, i) => {
      if (ps === null) return;
      const p = params[i];
      const tensors: Record<string, Tensor> = {};
      for (const [k, t] of Object.entries(ps.tensors) as Array<[string, Tensor]>) {
        if (t.numel !== p.numel) throw new LoraRangeError(`state.params[${i}].${k}: ${t.numel} values, the parameter ${p.name} has ${p.numel}`);
        tensors[k] = t.device === p.data.device ? Tensor.zeros(p.shape, { dtype: 'f32', device: t.device }).copyFrom(t) : t.to({ dtype: 'f32', device: p.data.device });
      }
      this.setParamState(p, ps.step, tensors);
    });
    this.#steps = steps;
  }

  /** Drops every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.parameters) p.zeroGrad();
  }

  /** Frees the optimizer state. */
  dispose(): void {
    this.#disposed = true;
    this.freeState();
  }

  /** The kernel steps of one parameter's update; state advances only once its step succeeded. */
  protected abstract updateSteps(p: Parameter, grad: Tensor, group: ParamGroup): KernelSteps<void>;
  protected abstract freeState(): void;
  protected abstract paramState(p: Parameter): ParamState | null;
  /** Takes ownership of the tensors. */
  protected abstract setParamState(p: Parameter, step: number, tensors: Record<string, Tensor>): void;
}

/** An f32 copy of a 16-bit parameter, so updates smaller than its rounding step still count. */
function masterCopy(p: Parameter): Tensor | null {
  return p.data.dtype === 'f32' ? null : p.data.to({ dtype: 'f32' });
}

export interface AdamWOptions extends OptimizerBaseOptions {
  /** Default 1e-3. */
  lr?: number;
  /** Default [0.9, 0.999]. */
  betas?: [number, number];
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay, default 0.01 (PyTorch's AdamW). */
  weightDecay?: number;
}

interface AdamState {
  expAvg: Tensor;
  expAvgSq: Tensor;
  master: Tensor | null;
  step: number;
}

/** AdamW as torch.optim.AdamW (amsgrad off): decoupled decay and bias correction. */
export class AdamW extends Optimizer {
  readonly betas: readonly [number, number];
  readonly eps: number;
  #state = new Map<Parameter, AdamState>();

  constructor(params: Parameter[] | ParamGroupSpec[], opts: AdamWOptions = {}) {
    const o = checkOptions(opts, ['lr', 'betas', 'eps', 'weightDecay', 'loraPlusLrRatio'], 'opts') as AdamWOptions;
    super(params, { lr: o.lr ?? 1e-3, weightDecay: o.weightDecay ?? 0.01, loraPlusLrRatio: o.loraPlusLrRatio });
    const betas = o.betas ?? [0.9, 0.999];
    if (!Array.isArray(betas) || betas.length !== 2) throw new LoraTypeError('opts.betas: expected [beta1, beta2]');
    betas.forEach((b, i) => {
      checkFinite(b, `opts.betas[${i}]`);
      if (b < 0 || b >= 1) throw new LoraRangeError(`opts.betas[${i}]: expected 0 <= beta < 1, got ${b}`);
    });
    this.betas = [betas[0], betas[1]];
    this.eps = checkNonNeg(o.eps ?? 1e-8, 'opts.eps');
  }

  /** The state of one parameter (copies), for inspection and tests. */
  stateOf(p: Parameter): { expAvg: Float32Array; expAvgSq: Float32Array; step: number } | null {
    const s = this.#state.get(p);
    return s ? { expAvg: s.expAvg.toFloat32Array(), expAvgSq: s.expAvgSq.toFloat32Array(), step: s.step } : null;
  }

  protected *updateSteps(p: Parameter, grad: Tensor, g: ParamGroup): KernelSteps<void> {
    let s = this.#state.get(p);
    if (!s) {
      const device = p.data.device;
      s = { expAvg: Tensor.zeros(p.shape, { device }), expAvgSq: Tensor.zeros(p.shape, { device }), master: masterCopy(p), step: 0 };
      this.#state.set(p, s);
    }
    const next = s.step + 1;
    yield step('adamwStep', p.data.handle, grad.handle, s.expAvg.handle, s.expAvgSq.handle, s.master?.handle ?? null,
      g.lr, this.betas[0], this.betas[1], this.eps, g.weightDecay, next);
    s.step = next;
  }

  protected freeState(): void {
    for (const s of this.#state.values()) [s.expAvg, s.expAvgSq, s.master].forEach((t) => t?.dispose());
    this.#state.clear();
  }

  protected paramState(p: Parameter): ParamState | null {
    const s = this.#state.get(p);
    if (!s) return null;
    return { step: s.step, tensors: { exp_avg: s.expAvg, exp_avg_sq: s.expAvgSq, ...(s.master ? { master: s.master } : {}) } };
  }

  protected setParamState(p: Parameter, step: number, t: Record<string, Tensor>): void {
    if (!t.exp_avg || !t.exp_avg_sq) throw new LoraRangeError(`state: AdamW needs exp_avg and exp_avg_sq for ${p.name}`);
    this.#state.set(p, { expAvg: t.exp_avg, expAvgSq: t.exp_avg_sq, master: t.master ?? null, step });
  }
}

export interface SGDOptions extends OptimizerBaseOptions {
  /** Required, as in torch.optim.SGD's examples (no sensible default for adapters). */
  lr?: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  /** L2 penalty added to the gradient (coupled), default 0. */
  weightDecay?: number;
}

interface SgdState {
  momentumBuffer: Tensor | null;
  master: Tensor | null;
  steps: number;
}

/** SGD as torch.optim.SGD: momentum, dampening, Nesterov, coupled weight decay. */
export class SGD extends Optimizer {
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  #state = new Map<Parameter, SgdState>();

  constructor(params: Parameter[] | ParamGroupSpec[], opts: SGDOptions) {
    const o = checkOptions(opts, ['lr', 'momentum', 'dampening', 'nesterov', 'weightDecay', 'loraPlusLrRatio'], 'opts') as SGDOptions;
    if (o.lr === undefined) throw new LoraTypeError('opts.lr: required for SGD');
    super(params, { lr: o.lr, weightDecay: o.weightDecay ?? 0, loraPlusLrRatio: o.loraPlusLrRatio });
    this.momentum = checkNonNeg(o.momentum ?? 0, 'opts.momentum');
    this.dampening = checkFinite(o.dampening ?? 0, 'opts.dampening');
    this.nesterov = o.nesterov === undefined ? false : checkBool(o.nesterov, 'opts.nesterov');
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0))
      throw new LoraRangeError('opts.nesterov: Nesterov momentum needs momentum > 0 and dampening = 0');
  }

  protected *updateSteps(p: Parameter, grad: Tensor, g: ParamGroup): KernelSteps<void> {
    let s = this.#state.get(p);
    if (!s) {
      s = { momentumBuffer: this.momentum !== 0 ? Tensor.zeros(p.shape, { device: p.data.device }) : null, master: masterCopy(p), steps: 0 };
      this.#state.set(p, s);
    }
    yield step('sgdStep', p.data.handle, grad.handle, s.momentumBuffer?.handle ?? null, s.master?.handle ?? null,
      g.lr, this.momentum, this.dampening, this.nesterov, g.weightDecay, s.steps === 0);
    s.steps++;
  }

  protected freeState(): void {
    for (const s of this.#state.values()) [s.momentumBuffer, s.master].forEach((t) => t?.dispose());
    this.#state.clear();
  }

  protected paramState(p: Parameter): ParamState | null {
    const s = this.#state.get(p);
    if (!s) return null;
    return { step: s.steps, tensors: { ...(s.momentumBuffer ? { momentum_buffer: s.momentumBuffer } : {}), ...(s.master ? { master: s.master } : {}) } };
  }

  protected setParamState(p: Parameter, step: number, t: Record<string, Tensor>): void {
    this.#state.set(p, { momentumBuffer: t.momentum_buffer ?? null, master: t.master ?? null, steps: step });
  }
}

/**
 * Scales the gradients so their global L2 norm is at most maxNorm (torch's clip_grad_norm_);
 * returns the norm before clipping.
 */
export function clipGradNorm(params: readonly Parameter[], maxNorm: number): number {
  if (!Array.isArray(params)) throw new LoraTypeError('params: expected an array of Parameters');
  const max = checkNonNeg(maxNorm, 'maxNorm');
  let sq = 0;
  for (const p of params) if (p.grad) sq += runOp('sumSquares', p.grad.handle);
  const norm = Math.sqrt(sq);
  const coef = max / (norm + 1e-6);
  if (coef < 1) for (const p of params) if (p.grad) runOp('scaleInplace', p.grad.handle, coef);
  return norm;
}
