import { AdamW, LRScheduler, Parameter, Tensor, cosineSchedule, cosineWarmupFactor, linearSchedule, linearWarmupDecayFactor } from '../lib';

function params(): Parameter[] {
  return [
    new Parameter('lora_A.default.weight', 'lora_A', 'default', Tensor.zeros([2, 4])),
    new Parameter('lora_B.default.weight', 'lora_B', 'default', Tensor.zeros([4, 2])),
  ];
}

describe('schedules', () => {
  test('linear warm-up then linear decay: values from the formula', () => {
    const f = (s: number) => linearWarmupDecayFactor(s, 10, 100);
    expect([0, 5, 10, 55, 91, 100, 130].map(f)).toEqual([0, 0.5, 1, 0.5, 0.1, 0, 0]);
    expect(linearWarmupDecayFactor(3, 0, 4)).toBe(0.25);
  });

  test('cosine with warm-up: values from the formula', () => {
    expect(cosineWarmupFactor(4, 8, 108)).toBe(0.5);
    expect(cosineWarmupFactor(8, 8, 108)).toBe(1);
    expect(cosineWarmupFactor(58, 8, 108)).toBeCloseTo(0.5, 12);
    expect(cosineWarmupFactor(108, 8, 108)).toBeCloseTo(0, 12);
    expect(cosineWarmupFactor(1, 0, 4)).toBeCloseTo(0.5 * (1 + Math.cos(Math.PI / 4)), 12);
    expect(cosineWarmupFactor(3, 0, 4)).toBeCloseTo(0.5 * (1 + Math.cos((3 * Math.PI) / 4)), 12);
    // numCycles 1: back up to 1 at the end
    expect(cosineWarmupFactor(4, 0, 4, 1)).toBeCloseTo(1, 12);
  });

  test('a scheduler sets every group lr = initialLr·factor(step), LoRA+ groups included', () => {
    const opt = new AdamW(params(), { lr: 1e-3, loraPlusLrRatio: 4 });
    const sched = linearSchedule(opt, { warmupSteps: 2, totalSteps: 6 });
    const seen: number[][] = [sched.lastLr];
    for (let s = 0; s < 6; s++) {
      opt.step();
      sched.step();
      seen.push(sched.lastLr);
    }
    const expected = [0, 0.5, 1, 0.75, 0.5, 0.25, 0].map((f) => [1e-3 * f, 4e-3 * f]);
    seen.forEach((lrs, i) => lrs.forEach((lr, j) => expect(lr).toBeCloseTo(expected[i][j], 15)));
    expect(sched.currentStep).toBe(6);
  });

  test('cosine scheduler drives the optimizer; bad options give typed errors', () => {
    const opt = new AdamW(params(), { lr: 2e-3 });
    const sched = cosineSchedule(opt, { totalSteps: 4 });
    expect(sched.lastLr[0]).toBeCloseTo(2e-3, 15);
    sched.step();
    sched.step();
    expect(sched.lastLr[0]).toBeCloseTo(1e-3, 15);
    expect(() => linearSchedule(opt, { totalSteps: 0 })).toThrow(/opts.totalSteps/);
    expect(() => linearSchedule(opt, { totalSteps: 5, warmupSteps: 6 })).toThrow(/opts.warmupSteps/);
    expect(() => new LRScheduler(opt, () => -1)).toThrow(expect.objectContaining({ name: 'LoraRangeError' }));
    expect(() => new LRScheduler({} as never, () => 1)).toThrow(/optimizer/);
  });
});
