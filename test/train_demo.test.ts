/** A shortened `npm run demo`: the same code path on a smaller network and fewer steps. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backendInfo } from '../lib';
import { runDemo, checkDevice } from '../lib/demo/run';

const small = {
  steps: 150,
  batch: 32,
  inFeatures: 48,
  hidden: 96,
  outFeatures: 32,
  teacherRank: 2,
  r: 4,
  lr: 1e-2,
  timingBatch: 64,
  timingReps: 3,
  progress: false,
  png: false,
  log: () => {},
};

describe('demo (shortened)', () => {
  test('the loss falls at least 10x, merged equals unmerged, files are written; same seed, same losses', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-demo-'));
    const a = await runDemo({ ...small, outDir: dir, seed: 3 });
    expect(a.losses).toHaveLength(150);
    expect(a.lossDrop).toBeGreaterThanOrEqual(10);
    expect(a.mergeRelErr).toBeLessThanOrEqual(1e-5);
    expect(a.recoveryErr.fc1).toBeLessThan(0.5);
    expect(a.trainableParams).toBe(4 * 48 + 96 * 4 + 4 * 96 + 32 * 4);
    const svg = fs.readFileSync(path.join(dir, 'loss_curve.svg'), 'utf8');
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    expect(svg).toMatch(/<path d="M[\d.]+,[\d.]+(L[\d.]+,[\d.]+){149}"/);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    expect(fs.readFileSync(path.join(dir, 'loss.csv'), 'utf8').trim().split('\n')).toHaveLength(151);
    // The adapter in peft's format, and a checkpoint every steps/2.
    for (const d of [a.files.adapter, ...a.files.checkpoints]) {
      expect(fs.existsSync(path.join(d, 'adapter_model.safetensors'))).toBe(true);
      expect(JSON.parse(fs.readFileSync(path.join(d, 'adapter_config.json'), 'utf8'))).toMatchObject({ peft_type: 'LORA', r: 4, target_modules: ['fc1', 'fc2'] });
    }
    expect(a.files.checkpoints.map((d) => path.basename(d))).toEqual(['checkpoint-75', 'checkpoint-150']);
    expect(a.reloadRelErr).toBeLessThanOrEqual(1e-6);
    const summary = JSON.parse(fs.readFileSync(path.join(dir, 'summary.json'), 'utf8'));
    expect(summary.lossDrop).toBeCloseTo(a.lossDrop, 10);

    const b = await runDemo({ ...small, outDir: dir, seed: 3 });
    expect(b.losses).toEqual(a.losses);
    const c = await runDemo({ ...small, outDir: dir, seed: 4, steps: 20 });
    expect(c.losses[5]).not.toBe(a.losses[5]);
  });

  test('--device: cpu works, cuda works where usable and errors clearly elsewhere, other values are rejected', () => {
    expect(checkDevice('cpu')).toBe('cpu');
    if (backendInfo().usable.includes('cuda')) expect(checkDevice('cuda')).toBe('cuda');
    else expect(() => checkDevice('cuda')).toThrow(/--device cuda: /);
    expect(() => checkDevice('tpu')).toThrow(/expected 'cpu' or 'cuda'/);
  });
});
