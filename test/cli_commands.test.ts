/**
 * What a newcomer runs first: `lorakit --version`, every command's --help (defaults and an
 * example), `inspect` on a downloaded folder, `merge` on a single-file model folder.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { SafetensorsReader } from '../lib';
import { main, version } from '../lib/cli';
import { run as inspect } from '../lib/cli/inspect';
import { run as merge } from '../lib/cli/merge';
import { GOLDEN_DIR, expectClose } from './helpers/golden';

const TINY = path.join(GOLDEN_DIR, 'opt_tiny');
const ADAPTER = path.join(TINY, 'adapter');

let dir: string;
let out: string[];
let err: string[];
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-cli-cmds-'));
  out = [];
  err = [];
  jest.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void out.push(a.join(' ')));
  jest.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')));
});
afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

const COMMANDS = fs.readdirSync(path.join(__dirname, '..', 'lib', 'cli')).filter((f) => f.endsWith('.ts') && !f.startsWith('_')).map((f) => f.slice(0, -3));

test('--version prints package.json\'s version', async () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
  for (const flag of ['--version', '-v', 'version']) {
    out.length = 0;
    expect(await main([flag])).toBe(0);
    expect(out).toEqual([pkg.version]);
  }
  expect(version()).toBe(pkg.version);
});

test.each(COMMANDS)('`%s --help` exits 0 with the defaults and an example', async (name) => {
  expect(await main([name, '--help'])).toBe(0);
  const text = out.join('\n');
  expect(text).toMatch(new RegExp(`^usage: lorakit ${name}`));
  expect(text).toMatch(/default/);
  expect(text).toMatch(new RegExp(`examples?:\\n\\s+(\\S+=\\S+ )?lorakit ${name}`));
  out.length = 0;
  expect(await main(['help', name])).toBe(0);
  expect(out.join('\n')).toBe(text);
});

test('the top-level help lists every command and says how to get more', async () => {
  expect(await main(['--help'])).toBe(0);
  const text = out.join('\n');
  for (const c of COMMANDS) expect(text).toMatch(new RegExp(`^  ${c}\\s`, 'm'));
  expect(text).toContain('lorakit <command> --help');
  expect(await main([])).toBe(1);
});

test('info says why cuda is not usable, and which GEMM blocks the cpu uses', async () => {
  const { backendInfo } = await import('../lib');
  const info = backendInfo();
  expect(await main(['info'])).toBe(0);
  const text = out.join('\n');
  expect(text).toMatch(/^compiled backends: /m);
  expect(text).toMatch(/^cpu gemm blocks:   mc \d+, kc \d+, nc \d+ \(.+\)(; f32 W read in place( where faster \(timed per call shape\))?)?$/m);
  expect(text.includes('; f32 W read in place')).toBe(info.gemmBlocks.wInPlace);
  if (info.cudaUnavailable) expect(text).toContain(`cuda:              not usable: ${info.cudaUnavailable}`);
  else expect(text).not.toMatch(/not usable/);
});

test('merge --help says what the output dtype and --scale are', async () => {
  expect(await merge(['--help'])).toBe(0);
  const text = out.join('\n');
  expect(text).toMatch(/--dtype D\s+output dtype of float tensors: f32, f16 or bf16 \(default: each tensor keeps its\s+own dtype/);
  expect(text).toMatch(/--scale S\s+multiplies the adapter's scaling lora_alpha\/r/);
});

describe('inspect on a folder', () => {
  test('base_model.safetensors plus an adapter folder: each file and adapter is listed and shown', async () => {
    expect(await inspect([TINY])).toBe(0);
    const text = out.join('\n');
    expect(text).toMatch(/^folder .*opt_tiny holds: base_model.safetensors, expected.safetensors, merged_model.safetensors, adapter adapter\/; other files: config.json$/m);
    expect(text).toMatch(/^checkpoint .*base_model.safetensors$/m);
    expect(text).toMatch(/^adapter .*opt_tiny\/adapter$/m);
    expect(text).toMatch(/modules: 4, ranks: 8, tensors: 8, parameters: 4,096/);
    expect(text.match(/tensors: 36, parameters: 79,488/g)).toHaveLength(2); // base and merged
  });

  test('--json gives one object with a report per item', async () => {
    expect(await inspect([TINY, '--json'])).toBe(0);
    expect(out).toHaveLength(1);
    const j = JSON.parse(out[0]) as { kind: string; items: Array<{ kind: string; path: string; report: { kind: string; params: number } }>; otherFiles: string[] };
    expect(j.kind).toBe('folder');
    expect(j.items.map((i) => [i.kind, path.basename(i.path), i.report.kind])).toEqual([
      ['file', 'base_model.safetensors', 'checkpoint'],
      ['file', 'expected.safetensors', 'checkpoint'],
      ['file', 'merged_model.safetensors', 'checkpoint'],
      ['adapter', 'adapter', 'adapter'],
    ]);
    expect(j.items[3].report.params).toBe(4096);
    expect(j.otherFiles).toEqual(['config.json']);
  });

  test('a model folder with an adapter inside: the model once, then the adapter', async () => {
    const m = path.join(dir, 'model');
    fs.mkdirSync(m);
    fs.copyFileSync(path.join(TINY, 'base_model.safetensors'), path.join(m, 'model.safetensors'));
    fs.copyFileSync(path.join(TINY, 'config.json'), path.join(m, 'config.json'));
    fs.cpSync(ADAPTER, path.join(m, 'lora'), { recursive: true });
    expect(await inspect([m])).toBe(0);
    expect(out[0]).toMatch(/holds: model \(model.safetensors\), adapter lora\/; other files: config.json$/);
    // a plain model folder is shown as before: the checkpoint alone
    fs.rmSync(path.join(m, 'lora'), { recursive: true });
    out.length = 0;
    expect(await inspect([m])).toBe(0);
    expect(out[0]).toMatch(/^checkpoint .*model \(model.safetensors\)$/);
  });

  test('a folder with nothing to show says what it holds', async () => {
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'x');
    expect(await inspect([dir])).toBe(1);
    expect(err.pop()).toMatch(/holds no .safetensors file and no adapter folder \(it has: notes.txt\)/);
  });
});

describe('merge on a single-file model folder', () => {
  function modelFolder(weights = 'model.safetensors'): string {
    const m = path.join(dir, 'model');
    fs.mkdirSync(m);
    fs.copyFileSync(path.join(TINY, 'base_model.safetensors'), path.join(m, weights));
    fs.copyFileSync(path.join(TINY, 'config.json'), path.join(m, 'config.json'));
    fs.writeFileSync(path.join(m, 'tokenizer.json'), '{"version": "1.0"}');
    return m;
  }

  test('folder in, folder out: the weights under their own name, config.json and tokenizer copied', async () => {
    const m = modelFolder();
    const o = path.join(dir, 'merged');
    expect(await merge(['--base', m, '--adapter', ADAPTER, '--out', o, '--quiet'])).toBe(0);
    expect(fs.readdirSync(o).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json']);
    expect(fs.readFileSync(path.join(o, 'config.json'))).toEqual(fs.readFileSync(path.join(m, 'config.json')));
    const r = new SafetensorsReader(path.join(o, 'model.safetensors'));
    const ref = new SafetensorsReader(path.join(TINY, 'merged_model.safetensors'));
    for (const n of ref.names) expectClose(r.float32(n), ref.float32(n), 1e-5, n);
    r.close();
    ref.close();
  });

  test('a folder whose only weights file has another name works the same; --out naming a file is refused', async () => {
    const m = modelFolder('pytorch_model.safetensors');
    const o = path.join(dir, 'merged');
    expect(await merge(['--base', m, '--adapter', ADAPTER, '--out', o, '--quiet'])).toBe(0);
    expect(fs.readdirSync(o).sort()).toEqual(['config.json', 'pytorch_model.safetensors', 'tokenizer.json']);
    const f = path.join(dir, 'file.safetensors');
    fs.writeFileSync(f, '');
    expect(await merge(['--base', m, '--adapter', ADAPTER, '--out', f, '--quiet'])).toBe(1);
    expect(err.pop()).toMatch(/the base is a model folder, so out must be a folder/);
  });

  test('a folder with several weight files names them', async () => {
    expect(await merge(['--base', TINY, '--adapter', ADAPTER, '--out', path.join(dir, 'x'), '--quiet'])).toBe(1);
    expect(err.pop()).toMatch(/holds neither model.safetensors.index.json nor model.safetensors \(it has base_model.safetensors, expected.safetensors, merged_model.safetensors: give the file's path\)/);
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});

test('the installed entry point (dist/cli.js) answers --version and --help', () => {
  const cli = path.join(__dirname, '..', 'dist', 'cli.js');
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
  const { execFileSync } = require('child_process') as typeof import('child_process');
  expect(execFileSync(process.execPath, [cli, '--version'], { encoding: 'utf8' }).trim()).toBe(pkg.version);
  expect(execFileSync(process.execPath, [cli, 'merge', '--help'], { encoding: 'utf8' })).toMatch(/^usage: lorakit merge/);
});
