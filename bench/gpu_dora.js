// DoRA rows of bench/gpu.js (also alone: node bench/gpu.js --dora): r 16, n ∈ {16, 4096}, the plain
// LoRA forward and the DoRA forward of the same layer shapes, in eval (W, A, B frozen: the weight
// norm is cached) and in training mode (A rewritten before every call, as an optimizer step would:
// DoRA's norm then pays its W·Aᵀ pass each time; both sides pay the write, whose own time is a
// column). Each library's DoRA/LoRA ratio, and lorakit's DoRA against peft's (bench/gpu_peft.py,
// same run; peft recomputes its norm on every call and writes nothing).
'use strict';
const { LoraLinear, Tensor } = require('../dist');
const { randn, dev } = require('./gpu_data');

const DORA_R = 16;
const DORA_N = [16, 4096];

function doraRows(cfg, timed, seed) {
  const rows = [];
  const sets = 4;
  for (const dOut of cfg.d_out) {
    const Ws = Array.from({ length: sets }, () => dev(randn(dOut * cfg.d_in, seed++, 0.02), [dOut, cfg.d_in]));
    for (const n of DORA_N) {
      const x = dev(randn(n * cfg.d_in, seed++, 1), [n, cfg.d_in]);
      const make = (useDora) =>
        Ws.map((W) => new LoraLinear({ weight: W }).addAdapter('default', { r: DORA_R, loraAlpha: 2 * DORA_R, dtype: 'bf16', initLoraWeights: false, seed: 3, useDora }));
      const lora = make(false);
      const dora = make(true);
      [...lora, ...dora].forEach((l) => l.eval());
      const loraEval = timed((l) => l.forward(x).dispose(), lora);
      const doraEval = timed((l) => l.forward(x).dispose(), dora);
      [...lora, ...dora].forEach((l) => l.train());
      const write = (l) => {
        const A = l.loraA.get('default');
        A.copyFrom(A); // a write, as an optimizer step: DoRA's cached norm is recomputed
      };
      const loraTrain = timed((l) => (write(l), l.forward(x).dispose()), lora);
      const doraTrain = timed((l) => (write(l), l.forward(x).dispose()), dora);
      const writeAlone = timed(write, lora);
      [...lora, ...dora].forEach((l) => l.dispose());
      x.dispose();
      rows.push({ op: 'dora', d_out: dOut, n, r: DORA_R, lora_eval_us: loraEval, dora_eval_us: doraEval, lora_train_us: loraTrain, dora_train_us: doraTrain, write_us: writeAlone });
      console.error(`dora d_out=${dOut} n=${n}: eval LoRA ${loraEval.toFixed(1)} DoRA ${doraEval.toFixed(1)}; train LoRA ${loraTrain.toFixed(1)} DoRA ${doraTrain.toFixed(1)} (the A write alone ${writeAlone.toFixed(1)}) us`);
    }
    Ws.forEach((W) => W.dispose());
  }
  return rows;
}

function doraReport(rows, peft, fmt) {
  const lines = ['', `## DoRA forward against the plain LoRA forward (r = ${DORA_R}; training: A rewritten before each call, LoRA and DoRA alike)`, '',
    '| d_out | n | LoRA eval | DoRA eval | DoRA/LoRA eval | peft LoRA eval | peft DoRA eval | peft DoRA/LoRA | DoRA speedup vs peft (eval) | A write alone | LoRA train | DoRA train | DoRA/LoRA train | peft LoRA train | peft DoRA train | peft DoRA/LoRA train | DoRA speedup vs peft (train) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|'];
  for (const q of rows.filter((r) => r.op === 'dora')) {
    const p = (peft && peft.rows.find((x) => x.op === 'dora' && x.d_out === q.d_out && x.n === q.n)) || {};
    lines.push(`| ${q.d_out} | ${q.n} | ${fmt(q.lora_eval_us)} | ${fmt(q.dora_eval_us)} | ${fmt(q.dora_eval_us / q.lora_eval_us, 3)} | ${fmt(p.peft_lora_eval_us)} | ${fmt(p.peft_dora_eval_us)} | ${fmt(p.peft_dora_eval_us / p.peft_lora_eval_us, 2)} | ${fmt(p.peft_dora_eval_us / q.dora_eval_us, 2)} | ${fmt(q.write_us)} | ${fmt(q.lora_train_us)} | ${fmt(q.dora_train_us)} | ${fmt(q.dora_train_us / q.lora_train_us, 3)} | ${fmt(p.peft_lora_train_us)} | ${fmt(p.peft_dora_train_us)} | ${fmt(p.peft_dora_train_us / p.peft_lora_train_us, 2)} | ${fmt(p.peft_dora_train_us / q.dora_train_us, 2)} |${p.error ? ' peft: ' + p.error : ''}`);
  }
  return lines;
}

module.exports = { doraRows, doraReport, DORA_R, DORA_N };
