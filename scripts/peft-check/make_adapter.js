#!/usr/bin/env node
/**
 * Writes an adapter with lorakit for scripts/peft-check/check.py to verify with Python peft:
 * loads <opt_tiny dir>/base_model.safetensors, puts LoRA (r=8, alpha=32) on q_proj and v_proj with
 * non-zero seeded random A and B, saves it with savePretrained to <out>/adapter, and writes
 * lorakit's mergeAndUnload result to <out>/merged.safetensors (same names and tie metadata as the base).
 *
 * usage: node scripts/peft-check/make_adapter.js <opt_tiny dir> <out dir> [--seed N]
 * then:  python3 scripts/peft-check/check.py <opt_tiny dir> <out>/adapter <out>/merged.safetensors
 */
'use strict';
const fs = require('fs');
const path = require('path');
const lk = require(path.join(__dirname, '..', '..'));

function main(argv) {
  const seedAt = argv.indexOf('--seed');
  const seed = seedAt >= 0 ? Number(argv[seedAt + 1]) : 1234;
  const [tinyDir, outDir] = argv.filter((a, i) => !a.startsWith('--') && (seedAt < 0 || i !== seedAt + 1));
  if (!tinyDir || !outDir || !Number.isInteger(seed)) {
    console.error('usage: node scripts/peft-check/make_adapter.js <opt_tiny dir> <out dir> [--seed N]');
    return 2;
  }
  const basePath = path.join(tinyDir, 'base_model.safetensors');
  if (!fs.existsSync(basePath)) {
    console.error(`make_adapter: ${basePath} not found`);
    return 1;
  }
  const ck = lk.Checkpoint.open(basePath);
  const state = new Map(ck.names.map((n) => [n, ck.tensor(n)]));
  const metadata = ck.metadata;
  const modules = lk.modulesFromStateDict(state, { aliases: ck.aliases });
  ck.close();

  const model = new lk.LoraModel(modules, { targetModules: ['q_proj', 'v_proj'], r: 8, loraAlpha: 32, seed, taskType: 'CAUSAL_LM' });
  // Non-zero A and B of moderate size (peft's default init has B = 0, which would test nothing).
  const rng = new lk.Rng(seed);
  for (const layer of model.layers.values()) {
    for (const t of [layer.loraA.get('default'), layer.loraB.get('default')]) t.copyFrom(rng.fillNormal(new Float32Array(t.numel), 0, 0.05));
  }
  fs.mkdirSync(outDir, { recursive: true });
  const adapterDir = path.join(outDir, 'adapter');
  model.savePretrained(adapterDir);
  model.printTrainableParameters();
  const merged = model.mergeAndUnload();
  lk.writeSafetensors(path.join(outDir, 'merged.safetensors'), merged, metadata);
  console.log(`wrote ${adapterDir} (${fs.readdirSync(adapterDir).join(', ')}) and ${path.join(outDir, 'merged.safetensors')} (${merged.size} tensors)`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
