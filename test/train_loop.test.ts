import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { AdamW, LoraLinear, LoraModel, ProgressBar, SGD, Tensor, linearSchedule, mseLoss, train } from '../lib';
import { relErr } from './helpers/golden';
import { randomArray } from './helpers/reference';

const inF = 12;
const outF = 10;
const n = 8;

function layer(): LoraLinear {
  const l = new LoraLinear({ weight: Tensor.from(randomArray(outF * inF, 1, 0.3), [outF, inF]) });
  l.addAdapter('default', { r: 3, initLoraWeights: false, seed: 9 });
  return l;
}
const X = randomArray(n * inF, 2);
const T = randomArray(n * outF, 3);

/** forward + MSE + backward on rows [lo, hi). */
function stepOn(l: LoraLinear, lo: number, hi: number): number {
  const x = Tensor.from(X.slice(lo * inF, hi * inF), [hi - lo, inF]);
  const { loss, grad } = mseLoss(l.forward(x), T.slice(lo * outF, hi * outF));
  l.backward(grad);
  return loss;
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-train-'));
}

describe('train()', () => {
  test('gradient accumulation over two half batches equals one full batch', async () => {
    const full = layer();
    const halves = layer();
    const o1 = new SGD(full.parameters(), { lr: 0.1, momentum: 0.9 });
    const o2 = new SGD(halves.parameters(), { lr: 0.1, momentum: 0.9 });
    const r1 = await train({ optimizer: o1, steps: 5, progress: false, step: () => stepOn(full, 0, n) });
    const r2 = await train({
      optimizer: o2,
      steps: 5,
      progress: false,
      gradientAccumulationSteps: 2,
      step: ({ microStep }) => stepOn(halves, microStep * (n / 2), (microStep + 1) * (n / 2)),
    });
    expect(relErr(halves.loraA.get('default')!.toFloat32Array(), full.loraA.get('default')!.toFloat32Array())).toBeLessThan(1e-6);
    expect(relErr(halves.loraB.get('default')!.toFloat32Array(), full.loraB.get('default')!.toFloat32Array())).toBeLessThan(1e-6);
    expect(relErr(r2.losses, r1.losses)).toBeLessThan(1e-6);
    expect(r1.losses[4]).toBeLessThan(r1.losses[0]);
    expect(full.parameters().every((p) => p.grad === null)).toBe(true);
  });

  test('writes the loss log (CSV), checkpoints every N steps, follows the scheduler', async () => {
    const dir = tmpDir();
    const l = layer();
    const opt = new AdamW(l.parameters(), { lr: 1e-2 });
    const sched = linearSchedule(opt, { warmupSteps: 2, totalSteps: 7 });
    const seen: number[] = [];
    const res = await train({
      optimizer: opt,
      scheduler: sched,
      steps: 7,
      progress: false,
      logFile: path.join(dir, 'sub', 'loss.csv'),
      checkpointEvery: 3,
      checkpoint: (s) => {
        seen.push(s);
        expect(fs.readFileSync(path.join(dir, 'sub', 'loss.csv'), 'utf8').trim().split('\n').length).toBe(s + 1); // header + s rows, flushed before the checkpoint
      },
      step: () => stepOn(l, 0, n),
    });
    expect(seen).toEqual([3, 6]);
    expect(res.checkpoints).toEqual([3, 6]);
    const lines = fs.readFileSync(path.join(dir, 'sub', 'loss.csv'), 'utf8').trim().split('\n');
    expect(lines[0]).toBe('step,loss,lr');
    expect(lines).toHaveLength(8);
    const rows = lines.slice(1).map((s) => s.split(',').map(Number));
    expect(rows.map((r) => r[0])).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(rows.map((r) => r[1])).toEqual(res.losses);
    const lrs = rows.map((r) => r[2]);
    [0, 0.5, 1, 0.8, 0.6, 0.4, 0.2].forEach((f, i) => expect(lrs[i]).toBeCloseTo(1e-2 * f, 12));
    expect(fs.readdirSync(path.join(dir, 'sub')).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  test('LoraModel: parameters() gathers every layer; checkpoints are peft adapter directories', async () => {
    const dir = tmpDir();
    const w = Tensor.from(randomArray(outF * inF, 1, 0.3), [outF, inF]);
    const w2 = Tensor.from(randomArray(outF * outF, 4, 0.3), [outF, outF]);
    const model = new LoraModel(
      [
        { name: 'blk.q', kind: 'linear', weight: w },
        { name: 'blk.v', kind: 'linear', weight: w2 },
      ],
      { targetModules: ['q', 'v'], r: 2, seed: 1 },
    );
    expect(model.namedParameters().map(([n]) => n)).toEqual([
      'blk.q.lora_A.default.weight',
      'blk.q.lora_B.default.weight',
      'blk.v.lora_A.default.weight',
      'blk.v.lora_B.default.weight',
    ]);
    const params = model.parameters();
    expect(params.reduce((s, p) => s + p.numel, 0)).toBe(model.getNbTrainableParameters().trainable);
    const q = model.layers.get('blk.q') as LoraLinear;
    const v = model.layers.get('blk.v') as LoraLinear;
    const res = await train({
      optimizer: new AdamW(params, { lr: 1e-2 }),
      steps: 4,
      progress: false,
      checkpointEvery: 2,
      checkpoint: { model, dir },
      step: () => {
        const h = q.forward(Tensor.from(X, [n, inF]));
        const { loss, grad } = mseLoss(v.forward(h), T);
        q.backward(v.backward(grad).dx);
        return loss;
      },
    });
    expect(res.losses[3]).toBeLessThan(res.losses[0]);
    expect(fs.readdirSync(dir).sort()).toEqual(['checkpoint-2', 'checkpoint-4']);
    const back = LoraModel.fromPretrained(
      [
        { name: 'blk.q', kind: 'linear', weight: w.clone() },
        { name: 'blk.v', kind: 'linear', weight: w2.clone() },
      ],
      path.join(dir, 'checkpoint-4'),
    );
    expect(relErr(back.layers.get('blk.v')!.loraB.get('default')!.toFloat32Array(), v.loraB.get('default')!.toFloat32Array())).toBe(0);
    await expect(train({ optimizer: new AdamW(params), steps: 1, step: () => 0, checkpointEvery: 1, checkpoint: { model: {} as never, dir } })).rejects.toThrow(/savePretrained/);
  });

  test('bf16 adapters train through the f32 master copy and f32 gradients', async () => {
    const l = new LoraLinear({ weight: Tensor.from(randomArray(outF * inF, 1, 0.3), [outF, inF]) });
    l.addAdapter('default', { r: 3, initLoraWeights: false, seed: 9, dtype: 'bf16' });
    const params = l.parameters();
    expect(params.map((p) => p.data.dtype)).toEqual(['bf16', 'bf16']);
    const res = await train({ optimizer: new AdamW(params, { lr: 1e-2 }), steps: 30, progress: false, step: () => stepOn(l, 0, n) });
    const f32 = layer();
    const ref = await train({ optimizer: new AdamW(f32.parameters(), { lr: 1e-2 }), steps: 30, progress: false, step: () => stepOn(f32, 0, n) });
    expect(res.losses[29]).toBeLessThan(0.5 * res.losses[0]);
    expect(Math.abs(res.losses[29] - ref.losses[29])).toBeLessThan(0.01 * ref.losses[29]); // tracks the f32 run
  });

  test('progress bar only on a TTY', async () => {
    const out: string[] = [];
    const tty = { isTTY: true, columns: 200, write: (s: string) => out.push(s) };
    const l = layer();
    await train({ optimizer: new AdamW(l.parameters()), steps: 3, progressStream: tty, step: () => stepOn(l, 0, n) });
    expect(out.join('')).toMatch(/3\/3 100%/);
    expect(out[out.length - 1]).toBe('\n');
    const piped: string[] = [];
    await train({ optimizer: new AdamW(l.parameters()), steps: 3, progressStream: { isTTY: false, write: (s: string) => piped.push(s) }, step: () => stepOn(l, 0, n) });
    expect(piped).toEqual([]);
    expect(new ProgressBar(10, tty, true).render(5, 'loss 1')).toMatch(/^█{10}░{10} 5\/10  50%.*loss 1$/);
  });

  test('bad options and non-finite losses are clear errors', async () => {
    const l = layer();
    const opt = new AdamW(l.parameters());
    await expect(train({ optimizer: {} as never, steps: 1, step: () => 0 })).rejects.toThrow(/opts.optimizer/);
    await expect(train({ optimizer: opt, steps: -1, step: () => 0 })).rejects.toThrow(/opts.steps/);
    await expect(train({ optimizer: opt, steps: 1, checkpointEvery: 1, step: () => 0 })).rejects.toThrow(/opts.checkpoint/);
    await expect(train({ optimizer: opt, steps: 2, progress: false, step: () => NaN })).rejects.toThrow(/non-finite loss/);
    await expect(train({ optimizer: opt, steps: 1, stepz: 1 } as never)).rejects.toThrow(/unknown option 'stepz'/);
  });
});
