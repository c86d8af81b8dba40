#!/usr/bin/env node
/**
 * Checks README.md's TypeScript as a reader would use it: every ```ts block is type-checked with
 * `tsc --noEmit --strict` against the package's own published types (dist/, from `npm run
 * build:ts`; 'lorakit' is mapped to dist/index.d.ts), each block on its own as a module. With
 * --run, each block then runs as written: transpiled to an ES module that imports 'lorakit' (this
 * checkout, linked into a scratch node_modules) in a fresh folder holding the files the README
 * names (./my-adapter, model.safetensors), made here with lorakit itself. Errors are reported at
 * their README line.
 *
 *   node scripts/check-readme-snippets.js [--run] [--readme PATH] [--keep]
 */
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const argValue = (name) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const readme = path.resolve(argValue('--readme') ?? path.join(root, 'README.md'));
const run = args.includes('--run');
const keep = args.includes('--keep');

/** The ```ts blocks: { line (README line of the block's first code line), code }. */
function extractSnippets(text) {
  const out = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (!/^```ts\s*$/.test(lines[i])) continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !/^```\s*$/.test(lines[end])) end++;
    out.push({ line: start + 1, code: lines.slice(start, end).join('\n') + '\n' });
    i = end;
  }
  return out;
}

function typeCheck(dir, snippets) {
  const files = snippets.map((s) => {
    const f = path.join(dir, `readme-${s.line}.ts`);
    fs.writeFileSync(f, s.code);
    return f;
  });
  const tsconfig = {
    compilerOptions: {
      strict: true,
      noEmit: true,
      target: 'ES2022',
      module: 'ESNext',
      moduleResolution: 'Bundler',
      moduleDetection: 'force', // every block is its own module (top-level await, no shared names)
      lib: ['ES2022'],
      types: ['node'],
      typeRoots: [path.join(root, 'node_modules', '@types')],
      paths: { lorakit: [path.join(root, 'dist', 'index.d.ts')] },
      skipLibCheck: true,
    },
    files,
  };
  fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify(tsconfig, null, 2));
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', path.join(dir, 'tsconfig.json'), '--pretty', 'false'], { encoding: 'utf8' });
  const errors = [];
  for (const line of `${r.stdout}${r.stderr}`.split('\n')) {
    const m = /readme-(\d+)\.ts\((\d+),(\d+)\): (.*)$/.exec(line);
    if (m) errors.push(`README.md:${Number(m[1]) + Number(m[2]) - 1}:${m[3]}: ${m[4]}`);
    else if (line.trim()) errors.push(line.trim());
  }
  return r.status === 0 ? [] : errors.length ? errors : [`tsc exited with ${r.status}`];
}

/** The files the README's snippets read, made with lorakit itself so that they are valid peft/safetensors files. */
function makeFixtures(dir) {
  const lk = require(path.join(root, 'dist'));
  const rng = new lk.Rng(7);
  const rand = (shape, scale = 0.05) => lk.Tensor.from(rng.fillUniform(new Float32Array(shape.reduce((a, b) => a * b, 1)), -scale, scale), shape);
  // ./my-adapter: peft's files for a 1024×1024 q_proj (the Float32Array example)
  const q = 'model.decoder.layers.0.self_attn.q_proj';
  const qModel = new lk.LoraModel([{ name: q, kind: 'linear', weight: rand([1024, 1024]) }], { targetModules: ['q_proj'], r: 8, loraAlpha: 16, initLoraWeights: false, seed: 3 });
  qModel.savePretrained(path.join(dir, 'my-adapter'));
  qModel.dispose();
  // model.safetensors: a tiny OPT-like decoder (2 layers, hidden 64), lm_head tied to embed_tokens as torch saves it
  const tensors = new Map();
  const put = (name, shape) => {
    const t = rand(shape);
    tensors.set(name, t);
  };
  put('model.decoder.embed_tokens.weight', [128, 64]);
  for (let l = 0; l < 2; l++) {
    const p = `model.decoder.layers.${l}`;
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      put(`${p}.self_attn.${proj}.weight`, [64, 64]);
      put(`${p}.self_attn.${proj}.bias`, [64]);
    }
    put(`${p}.fc1.weight`, [256, 64]);
    put(`${p}.fc1.bias`, [256]);
    put(`${p}.fc2.weight`, [64, 256]);
    put(`${p}.fc2.bias`, [64]);
    put(`${p}.self_attn_layer_norm.weight`, [64]);
    put(`${p}.final_layer_norm.weight`, [64]);
  }
  lk.writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { 'lm_head.weight': 'model.decoder.embed_tokens.weight' });
  for (const t of tensors.values()) t.dispose();
}

function runSnippets(dir, snippets) {
  const ts = require(path.join(root, 'node_modules', 'typescript'));
  fs.mkdirSync(path.join(dir, 'node_modules'), { recursive: true });
  fs.symlinkSync(root, path.join(dir, 'node_modules', 'lorakit'), 'dir');
  const fixtures = path.join(dir, 'fixtures');
  fs.mkdirSync(fixtures);
  makeFixtures(fixtures);
  const errors = [];
  for (const s of snippets) {
    const cwd = path.join(dir, `run-${s.line}`);
    fs.cpSync(fixtures, cwd, { recursive: true });
    const js = ts.transpileModule(s.code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
    const file = path.join(cwd, 'snippet.mjs');
    fs.writeFileSync(file, js);
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [file], { cwd, encoding: 'utf8', timeout: 120000 });
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    if (r.status !== 0) errors.push(`README.md:${s.line}: the block exits with ${r.status ?? r.signal} after ${secs} s:\n${`${r.stdout}\n${r.stderr}`.trim().split('\n').slice(-15).join('\n')}`);
    else console.log(`  ran README.md:${s.line} (${secs} s)`);
  }
  return errors;
}

function main() {
  if (!fs.existsSync(path.join(root, 'dist', 'index.d.ts'))) {
    console.error('check-readme-snippets: dist/index.d.ts is missing: run `npm run build:ts` first');
    return 2;
  }
  const snippets = extractSnippets(fs.readFileSync(readme, 'utf8'));
  if (snippets.length === 0) {
    console.error(`check-readme-snippets: no \`\`\`ts block in ${readme}`);
    return 1;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-readme-'));
  try {
    const typeErrors = typeCheck(dir, snippets);
    if (typeErrors.length) {
      console.error(`check-readme-snippets: ${snippets.length} blocks, type errors (tsc --strict):\n${typeErrors.join('\n')}`);
      return 1;
    }
    console.log(`check-readme-snippets: ${snippets.length} \`\`\`ts blocks type-check (tsc --noEmit --strict)`);
    if (!run) return 0;
    const runErrors = runSnippets(dir, snippets);
    if (runErrors.length) {
      console.error(`check-readme-snippets: blocks that do not run as written:\n${runErrors.join('\n\n')}`);
      return 1;
    }
    console.log(`check-readme-snippets: all ${snippets.length} blocks run`);
    return 0;
  } finally {
    if (keep) console.log(`kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) process.exitCode = main();
module.exports = { extractSnippets };
