/** `lorakit merge` and `lorakit inspect` on peft's opt_tiny files (single file and sharded). */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Checkpoint, SafetensorsReader, writeSafetensors } from '../lib';
import { run as inspect } from '../lib/cli/inspect';
import { run as merge } from '../lib/cli/merge';
import { GOLDEN_DIR, expectClose, loadCase, relErr } from './helpers/golden';
import { writeCaseAsPeft } from './helpers/peft_adapter';

const TINY = path.join(GOLDEN_DIR, 'opt_tiny');
const BASE = path.join(TINY, 'base_model.safetensors');
const ADAPTER = path.join(TINY, 'adapter');
const MERGED = path.join(TINY, 'merged_model.safetensors');

let dir: string;
let out: string[];
let err: string[];
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-cli-'));
  out = [];
  err = [];
  jest.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void out.push(a.join(' ')));
  jest.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')));
});
afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

function expectMatchesMerged(file: (name: string) => Float32Array, tol = 1e-5): void {
  const ref = new SafetensorsReader(MERGED);
  for (const n of ref.names) expectClose(file(n), ref.float32(n), tol, n);
  ref.close();
}

test('merge reproduces merged_model.safetensors tensor by tensor and keeps the tie metadata', async () => {
  const o = path.join(dir, 'merged.safetensors');
  expect(await merge(['--base', BASE, '--adapter', ADAPTER, '--out', o])).toBe(0);
  expect(out.join('\n')).toMatch(/merged 4 weights, wrote 36 tensors/);
  const r = new SafetensorsReader(o);
  expect(r.metadata).toEqual({ 'model.decoder.embed_tokens.weight': 'lm_head.weight' });
  expect(r.names.sort()).toEqual(new SafetensorsReader(MERGED).names.sort());
  expectMatchesMerged((n) => r.float32(n));
  // untouched tensors are byte-identical to the base
  const base = new SafetensorsReader(BASE);
  expect(Buffer.compare(Buffer.from(r.bytes('model.decoder.layers.0.fc1.weight')), Buffer.from(base.bytes('model.decoder.layers.0.fc1.weight')))).toBe(0);
  expect(fs.readdirSync(dir)).toEqual(['merged.safetensors']);
});

test('--dtype bf16 rounds once; --scale 0 leaves the base unchanged', async () => {
  const o = path.join(dir, 'bf16.safetensors');
  expect(await merge(['--base', BASE, '--adapter', ADAPTER, '--out', o, '--dtype', 'bf16'])).toBe(0);
  const r = new SafetensorsReader(o);
  expect(new Set(r.names.map((n) => r.entry(n).dtype))).toEqual(new Set(['BF16']));
  const ref = new SafetensorsReader(MERGED);
  for (const n of ref.names) expect(relErr(r.float32(n), ref.float32(n))).toBeLessThan(4e-3);
  const z = path.join(dir, 'zero.safetensors');
  expect(await merge(['--base', BASE, '--adapter', ADAPTER, '--out', z, '--scale', '0', '--quiet'])).toBe(0);
  expect(Buffer.compare(fs.readFileSync(z), fs.readFileSync(BASE))).toBe(0);
  const half = path.join(dir, 'half.safetensors');
  expect(await merge(['--base', BASE, '--adapter', ADAPTER, '--out', half, '--scale', '0.5', '--quiet'])).toBe(0);
  const h = new SafetensorsReader(half);
  const base = new SafetensorsReader(BASE);
  const n = 'model.decoder.layers.1.self_attn.v_proj.weight';
  const w0 = base.float32(n), w1 = ref.float32(n), wh = h.float32(n);
  expectClose(wh, w0.map((v, i) => v + 0.5 * (w1[i] - v)), 1e-5, 'half scale');
});

test('a sharded base gives sharded output with its index, metadata and sidecar files', async () => {
  const src = path.join(dir, 'base');
  fs.mkdirSync(src);
  const base = new SafetensorsReader(BASE);
  const names = base.names;
  const half = Math.ceil(names.length / 2);
  const shards = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const weightMap: Record<string, string> = {};
  [names.slice(0, half), names.slice(half)].forEach((part, i) => {
    writeSafetensors(path.join(src, shards[i]), new Map(part.map((n) => [n, { dtype: base.entry(n).dtype, shape: base.entry(n).shape, bytes: base.bytes(n) }])), base.metadata);
    for (const n of part) weightMap[n] = shards[i];
  });
  fs.writeFileSync(path.join(src, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 1 }, weight_map: weightMap }));
  fs.copyFileSync(path.join(TINY, 'config.json'), path.join(src, 'config.json'));
  const o = path.join(dir, 'out');
  expect(await merge(['--base', src, '--adapter', ADAPTER, '--out', o])).toBe(0);
  expect(fs.readdirSync(o).sort()).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
  const index = JSON.parse(fs.readFileSync(path.join(o, 'model.safetensors.index.json'), 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
  expect(index.weight_map).toEqual(weightMap);
  expect(index.metadata.total_size).toBe(names.reduce((s, n) => s + base.bytes(n).byteLength, 0));
  const ck = Checkpoint.open(o);
  expect(ck.metadata).toEqual(base.metadata);
  expectMatchesMerged((n) => ck.readerOf(n).float32(n));
  ck.close();
});

test('bad paths and arguments give clear errors and exit codes', async () => {
  expect(await merge(['--base', BASE, '--adapter', ADAPTER])).toBe(2);
  expect(err.pop()).toMatch(/missing --out/);
  expect(await merge(['--base', BASE, '--adapter', ADAPTER, '--out', path.join(dir, 'x'), '--dtype', 'f8'])).toBe(2);
  expect(err.pop()).toMatch(/--dtype must be f32, f16 or bf16/);
  expect(await merge(['--base', BASE, '--adapter', ADAPTER, '--out', path.join(dir, 'x'), '--scale', 'abc'])).toBe(2);
  expect(err.pop()).toMatch(/--scale must be a finite number/);
  expect(await merge(['--base', BASE, '--adapter', ADAPTER, '--out', path.join(dir, 'x'), '--bogus', '1'])).toBe(2);
  expect(err.pop()).toMatch(/unknown option --bogus/);
  expect(await merge(['--base', path.join(dir, 'none.safetensors'), '--adapter', ADAPTER, '--out', path.join(dir, 'x')])).toBe(1);
  expect(err.pop()).toMatch(/base: no such file or directory/);
  expect(await merge(['--base', BASE, '--adapter', dir, '--out', path.join(dir, 'x')])).toBe(1);
  expect(err.pop()).toMatch(/has no adapter_config.json/);
  expect(await merge(['--base', BASE, '--adapter', ADAPTER, '--out', path.join(dir, 'no', 'such', 'dir', 'x.safetensors')])).toBe(1);
  expect(err.pop()).toMatch(/does not exist/);
  // an adapter whose modules are not in the base
  const other = path.join(dir, 'other.safetensors');
  writeSafetensors(other, { 'lm_head.weight': { dtype: 'F32', shape: [1], bytes: new Uint8Array(4) } });
  expect(await merge(['--base', other, '--adapter', ADAPTER, '--out', path.join(dir, 'x.safetensors')])).toBe(1);
  expect(err.pop()).toMatch(/module 'model.decoder.layers.\d.self_attn.[qv]_proj' has no weight/);
  expect(fs.readdirSync(dir)).toEqual(['other.safetensors']);
});

test('inspect shows an adapter\'s config, shapes and counts, and a checkpoint\'s tensors', async () => {
  expect(await inspect([ADAPTER])).toBe(0);
  const text = out.join('\n');
  expect(text).toMatch(/lora_alpha: 32/);
  expect(text).toMatch(/modules: 4, ranks: 8, tensors: 8, parameters: 4,096/);
  expect(text).toMatch(/q_proj\.lora_A\.weight\s+F32\s+\[8, 64\]/);
  out.length = 0;
  expect(await inspect([BASE, '--json'])).toBe(0);
  const j = JSON.parse(out[0]) as { params: number; tensors: unknown[] };
  expect(j.params).toBe(79488);
  expect(j.tensors).toHaveLength(36);
  expect(await inspect([path.join(dir, 'missing')])).toBe(1);
  expect(err.pop()).toMatch(/no such file or directory/);
  expect(await inspect([])).toBe(2);
});

test.each([
  ['embedding', 'embed_tokens'],
  ['conv2d_k3', 'conv'],
  ['conv2d_k1', 'conv'],
  ['linear_rslora', 'q_proj'],
  ['conv1d_fan_in_fan_out', 'c_attn'],
  ['linear_dora', 'q_proj'],
])('merge handles peft golden case %s (module %s)', async (name, mod) => {
  const c = loadCase(name);
  const { base, adapter, weightName } = writeCaseAsPeft(c, dir, mod);
  const o = path.join(dir, 'out.safetensors');
  expect(await merge(['--base', base, '--adapter', adapter, '--out', o, '--quiet'])).toBe(0);
  expectClose(new SafetensorsReader(o).float32(weightName), c.f32('W_merged'), 1e-5, `${name} W_merged`);
});
