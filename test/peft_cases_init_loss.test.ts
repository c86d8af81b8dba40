/**
 * pissa / olora factors against peft's own init, and label smoothing's loss against torch's
 * F.cross_entropy(label_smoothing=…) and PyTorch's formula (test/fixtures/peft_cases).
 */
import * as path from 'path';
import { LoraLinear, SafetensorsFile, Tensor, crossEntropyLoss } from '../lib';
import { expectClose } from './helpers/golden';
import { PEFT_CASES_DIR, requirePeftCases } from './helpers/peft_cases';

beforeAll(() => requirePeftCases());

function read(name: string): { f: SafetensorsFile; meta: Record<string, number> } {
  const f = SafetensorsFile.read(path.join(PEFT_CASES_DIR, `${name}.safetensors`));
  return { f, meta: JSON.parse(f.metadata.case) };
}

/** B·A [out, in] in float64. */
function product(B: Float32Array, A: Float32Array, out: number, r: number, inF: number): Float64Array {
  const p = new Float64Array(out * inF);
  for (let o = 0; o < out; o++) for (let j = 0; j < r; j++) for (let i = 0; i < inF; i++) p[o * inF + i] += B[o * r + j] * A[j * inF + i];
  return p;
}

describe.each(['pissa', 'olora'] as const)('%s against peft 0.21', (kind) => {
  test('B·A and the rewritten base weight match peft within 1e-5', () => {
    const { f, meta } = read(kind);
    const W = f.tensor('W');
    const layer = new LoraLinear({ weight: W });
    layer.addAdapter('default', { r: meta.r, loraAlpha: meta.lora_alpha, initLoraWeights: kind });
    const A = layer.loraA.get('default')!.toFloat32Array();
    const B = layer.loraB.get('default')!.toFloat32Array();
    // The SVD's and the QR's signs are conventions: each factor pair is fixed only up to a sign per rank.
    const ours = product(B, A, meta.dout, meta.r, meta.din);
    const theirs = product(f.float32('B'), f.float32('A'), meta.dout, meta.r, meta.din);
    expectClose(ours, theirs, 1e-5, `${kind} B·A`);
    expectClose(W.toFloat32Array(), f.float32('W_residual'), 1e-5, `${kind} W_residual`);
    // Per-rank columns agree up to sign.
    const peftB = f.float32('B');
    for (let j = 0; j < meta.r; j++) {
      const col = (b: Float32Array) => Array.from({ length: meta.dout }, (_, o) => b[o * meta.r + j]);
      const a = col(B);
      const b = col(peftB);
      const sign = Math.sign(a.reduce((s, v, i) => s + v * b[i], 0));
      expectClose(a.map((v) => v * sign), b, 1e-4, `${kind} B column ${j}`);
    }
    layer.dispose();
    W.dispose();
  });
});

describe('label smoothing against torch.nn.functional.cross_entropy', () => {
  /** PyTorch's formula: per counted row (1−ε)·(−log p_t) + (ε/C)·Σ_c (−log p_c); mean over counted rows. */
  function torchFormula(logits: Float32Array, targets: number[], C: number, eps: number): { mean: number; sum: number } {
    let sum = 0;
    let counted = 0;
    targets.forEach((t, r) => {
      if (t === -100) return;
      const row = Array.from(logits.subarray(r * C, (r + 1) * C), Number);
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
      const nll = lse - row[t];
      const smooth = row.reduce((s, v) => s + (lse - v), 0) / C;
      sum += (1 - eps) * nll + eps * smooth;
      counted++;
    });
    return { mean: sum / counted, sum };
  }

  test('loss (mean and sum) and gradient equal torch within 1e-6', () => {
    const { f, meta } = read('label_smoothing');
    const logitsArr = f.float32('logits');
    const [rows, C] = f.entry('logits').shape;
    const targets = Array.from(f.int64('targets'), Number);
    const logits = Tensor.from(logitsArr, [rows, C]);
    const eps = meta.label_smoothing;
    const mean = crossEntropyLoss(logits, targets, { labelSmoothing: eps });
    const sum = crossEntropyLoss(logits, targets, { labelSmoothing: eps, reduction: 'sum' });
    expect(Math.abs(mean.loss - meta.loss_mean) / meta.loss_mean).toBeLessThan(1e-6);
    expect(Math.abs(sum.loss - meta.loss_sum) / meta.loss_sum).toBeLessThan(1e-6);
    const ref = torchFormula(logitsArr, targets, C, eps);
    expect(Math.abs(ref.mean - meta.loss_mean) / meta.loss_mean).toBeLessThan(1e-12);
    expect(Math.abs(mean.loss - ref.mean) / ref.mean).toBeLessThan(1e-12);
    expectClose(mean.grad.toFloat32Array(), f.float32('grad_mean'), 1e-6, 'grad');
    [logits, mean.grad, sum.grad].forEach((t) => t.dispose());
  });
});
