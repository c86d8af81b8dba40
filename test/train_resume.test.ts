/**
 * Resumable training: a run interrupted after a checkpoint and resumed with resumeFrom ends with
 * bit-identical adapters, losses and loss log to the uninterrupted run (dropout, gradient
 * accumulation, clipping, a scheduler, a trainable bias and a 16-bit parameter's f32 master copy).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { AdamW, LoraLinear, LoraModel, Optimizer, SGD, Tensor, linearSchedule, mseLoss, train } from '../lib';
import { randomArray } from './helpers/reference';

const X = randomArray(16 * 12, 2);
const T = randomArray(16 * 5, 3);

function model(): LoraModel {
  const modules = [
    { name: 'fc1', kind: 'linear' as const, weight: Tensor.from(randomArray(8 * 12, 1, 0.3), [8, 12]), bias: Tensor.from(randomArray(8, 4), [8]) },
    { name: 'fc2', kind: 'linear' as const, weight: Tensor.from(randomArray(5 * 8, 5, 0.3), [5, 8]), bias: Tensor.from(randomArray(5, 6), [5]) },
  ];
  return new LoraModel(modules, { targetModules: ['fc1', 'fc2'], r: 3, loraDropout: 0.2, initLoraWeights: false, bias: 'lora_only', seed: 11 });
}

/** fc2(fc1(x)) on 4 rows picked by (step, micro), MSE, backward through both layers. */
function stepFn(m: LoraModel) {
  const fc1 = m.layers.get('fc1') as LoraLinear;
  const fc2 = m.layers.get('fc2') as LoraLinear;
  return ({ step, microStep }: { step: number; microStep: number }) => {
    const lo = ((step * 2 + microStep) * 4) % 16;
    const x = Tensor.from(X.slice(lo * 12, (lo + 4) * 12), [4, 12]);
    const h = fc1.forward(x);
    const { loss, grad } = mseLoss(fc2.forward(h), T.slice(lo * 5, (lo + 4) * 5));
    const r2 = fc2.backward(grad);
    fc1.backward(r2.dx);
    return loss;
  };
}

function values(m: LoraModel): Array<[string, number[]]> {
  return m.namedParameters().map(([n, p]) => [n, Array.from(p.data.toFloat32Array())]);
}

type MakeOpt = (m: LoraModel) => Optimizer;
const optimizers: Array<[string, MakeOpt]> = [
  ['AdamW', (m) => new AdamW(m.parameters(), { lr: 0.05 })],
  ['SGD with momentum', (m) => new SGD(m.parameters(), { lr: 0.05, momentum: 0.9, nesterov: true })],
];

describe.each(optimizers)('train({ resumeFrom }) with %s', (_name, makeOpt) => {
  test('an interrupted and resumed run equals the uninterrupted one bit for bit', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-resume-'));
    try {
      const run = async (dir: string, opts: { stopAfter?: number; resumeFrom?: string }) => {
        const m = model();
        const optimizer = makeOpt(m);
        const scheduler = linearSchedule(optimizer, { warmupSteps: 2, totalSteps: 8 });
        let done = 0;
        const r = await train({
          optimizer, scheduler, steps: 8, gradientAccumulationSteps: 2, maxGradNorm: 1, progress: false,
          step: stepFn(m), checkpoint: { model: m, dir }, checkpointEvery: 3, logFile: path.join(dir, 'log.csv'),
          shouldStop: () => opts.stopAfter !== undefined && ++done >= opts.stopAfter,
          ...(opts.resumeFrom ? { resumeFrom: opts.resumeFrom } : {}),
        });
        return { m, r, log: fs.readFileSync(path.join(dir, 'log.csv'), 'utf8') };
      };
      const full = await run(path.join(root, 'full'), {});
      const cut = await run(path.join(root, 'cut'), { stopAfter: 4 }); // stops after step 4; its last checkpoint is step 3
      expect(cut.r.checkpoints).toEqual([3]);
      const resumed = await run(path.join(root, 'cut'), { resumeFrom: path.join(root, 'cut', 'checkpoint-3') });
      expect(resumed.r.losses).toEqual(full.r.losses);
      expect(resumed.r.checkpoints).toEqual(full.r.checkpoints);
      expect(values(resumed.m)).toEqual(values(full.m));
      expect(resumed.log).toEqual(full.log);
      expect(values(full.m).map(([n]) => n)).toContain('fc1.base_layer.bias');
      // Dropout was on: without the generator state the resumed run would differ.
      const noRng = JSON.parse(fs.readFileSync(path.join(root, 'cut', 'checkpoint-3', 'training_state.json'), 'utf8'));
      expect(noRng.rng.fc1.counter).toBe(6);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('resume checks', () => {
  test('a mismatched optimizer or a directory without training state is refused', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-resume-'));
    try {
      const m = model();
      await train({ optimizer: new AdamW(m.parameters()), steps: 1, progress: false, step: stepFn(m), checkpoint: { model: m, dir: root }, checkpointEvery: 1 });
      const m2 = model();
      await expect(train({ optimizer: new SGD(m2.parameters(), { lr: 1 }), steps: 2, progress: false, step: stepFn(m2), resumeFrom: path.join(root, 'checkpoint-1'), checkpoint: { model: m2, dir: root } }))
        .rejects.toThrow(/optimizer is AdamW, this run's SGD/);
      await expect(train({ optimizer: new AdamW(m2.parameters()), steps: 2, progress: false, step: stepFn(m2), resumeFrom: root }))
        .rejects.toThrow(/has no training_state.json/);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  test('a 16-bit parameter resumes with its f32 master copy', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-resume-'));
    try {
      const make = () => {
        const l = new LoraLinear({ weight: Tensor.from(randomArray(5 * 12, 1, 0.3), [5, 12]) });
        l.addAdapter('default', { r: 2, initLoraWeights: false, seed: 3, dtype: 'bf16' });
        return l;
      };
      const fakeModel = (l: LoraLinear) => ({ savePretrained: () => {}, rngState: () => ({ l: l.rngState() }), setRngState: (s: Record<string, ReturnType<LoraLinear['rngState']>>) => l.setRngState(s.l) });
      const go = async (l: LoraLinear, dir: string, stop?: number, resumeFrom?: string) => {
        let k = 0;
        const opt = new AdamW(l.parameters(), { lr: 1e-3 });
        await train({
          optimizer: opt, steps: 4, progress: false, checkpoint: { model: fakeModel(l), dir }, checkpointEvery: 2,
          shouldStop: () => stop !== undefined && ++k >= stop, ...(resumeFrom ? { resumeFrom } : {}),
          step: ({ step }) => {
            const x = Tensor.from(X.slice(step * 12, step * 12 + 24), [2, 12]);
            const { loss, grad } = mseLoss(l.forward(x), T.slice(0, 10));
            l.backward(grad);
            return loss;
          },
        });
        return l.parameters().map((p) => Array.from(p.data.toFloat32Array()));
      };
      const full = await go(make(), path.join(root, 'a'));
      await go(make(), path.join(root, 'b'), 2);
      const resumed = await go(make(), path.join(root, 'b'), undefined, path.join(root, 'b', 'checkpoint-2'));
      expect(resumed).toEqual(full);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
