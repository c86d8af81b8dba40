/**
 * Messages a newcomer meets: a missing adapter folder, a file that is not safetensors, an adapter
 * on a base weight of the wrong size, and a model used after mergeAndUnload().
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Checkpoint, LoraModel, SafetensorsReader, Tensor, modulesFromStateDict } from '../lib';
import { run as merge } from '../lib/cli/merge';
import { GOLDEN_DIR } from './helpers/golden';

const TINY = path.join(GOLDEN_DIR, 'opt_tiny');
const ADAPTER = path.join(TINY, 'adapter');

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-msg-'));
});
afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

function tinyModules(resize?: string) {
  const ck = Checkpoint.open(path.join(TINY, 'base_model.safetensors'));
  const tensors = new Map<string, Tensor>();
  for (const n of ck.names) tensors.set(n, n === resize ? Tensor.zeros([64, 32]) : ck.tensor(n));
  const modules = modulesFromStateDict(tensors, { aliases: ck.aliases });
  ck.close();
  return modules;
}

describe('adapter folder', () => {
  test('missing: says no adapter folder is there and what one holds (API and CLI)', async () => {
    const missing = path.join(dir, 'my-adapter');
    expect(() => LoraModel.fromPretrained(tinyModules(), missing)).toThrow(
      new RegExp(`^dir: no adapter folder at ${missing} \\(expected the folder peft's save_pretrained writes, with adapter_config.json and adapter_model.safetensors\\)$`),
    );
    const err: string[] = [];
    jest.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')));
    expect(await merge(['--base', path.join(TINY, 'base_model.safetensors'), '--adapter', missing, '--out', path.join(dir, 'o.safetensors')])).toBe(1);
    expect(err.pop()).toMatch(/^lorakit merge: adapter: no adapter folder at /);
  });

  test('a file given for the folder: the folder to give instead', () => {
    const f = path.join(ADAPTER, 'adapter_model.safetensors');
    expect(() => LoraModel.fromPretrained(tinyModules(), f)).toThrow(`dir: ${f} is a file, not an adapter folder: give its folder, ${ADAPTER}`);
  });
});

describe('a file that is not safetensors', () => {
  const cases: Array<[string, Buffer, RegExp]> = [
    ['a GGUF file', Buffer.concat([Buffer.from('GGUF'), Buffer.from([3, 0, 0, 0]), Buffer.alloc(64)]), /it is a GGUF file \(lorakit convert and lorakit merge read it\)/],
    ['a torch.save zip', Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(64, 7)]), /it is a zip archive \(PyTorch's torch.save format/],
    ['a pickle', Buffer.concat([Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46]), Buffer.alloc(64)]), /it is a Python pickle/],
    ['a JSON file', Buffer.from(JSON.stringify({ architectures: ['OPTForCausalLM'], hidden_size: 64 })), /it looks like a text file/],
  ];
  test.each(cases)('%s: "… is not a safetensors file: …" with a guess', (_what, bytes, guess) => {
    const f = path.join(dir, 'weights.safetensors');
    fs.writeFileSync(f, bytes);
    let msg = '';
    try {
      new SafetensorsReader(f);
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toMatch(new RegExp(`^${f} is not a safetensors file: `));
    expect(msg).toMatch(guess);
    expect(() => Checkpoint.open(f)).toThrow(/is not a safetensors file/);
  });

  test('a header that is not JSON after a plausible length', () => {
    const f = path.join(dir, 'w.safetensors');
    const b = Buffer.alloc(32, 0x41);
    b.writeBigUInt64LE(8n, 0);
    fs.writeFileSync(f, b);
    expect(() => new SafetensorsReader(f)).toThrow(`${f} is not a safetensors file: header is not valid JSON`);
  });
});

describe('fromPretrained shape mismatches', () => {
  test('a base weight of the wrong size is blamed, not r or rank_pattern', () => {
    const mod = 'model.decoder.layers.0.self_attn.q_proj';
    let msg = '';
    try {
      LoraModel.fromPretrained(tinyModules(`${mod}.weight`), ADAPTER);
    } catch (e) {
      expect((e as Error).name).toBe('ShapeError');
      msg = (e as Error).message;
    }
    expect(msg).toMatch(new RegExp(`module '${mod.replace(/\./g, '\\.')}': lora_A \\[8, 64\\] / lora_B \\[64, 8\\] do not fit the layer \\(expects \\[8, 32\\] / \\[64, 8\\]\\)`));
    expect(msg).toMatch(/the base weight's shape is wrong: '.*q_proj' is \[64, 32\], but the adapter was trained on a \[64, 64\] weight/);
    expect(msg).not.toMatch(/rank_pattern/);
  });

  test('another rank with the right feature sizes still points at r and rank_pattern', () => {
    const a = path.join(dir, 'a');
    fs.cpSync(ADAPTER, a, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(a, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(a, 'adapter_config.json'), JSON.stringify({ ...cfg, r: 4 }));
    expect(() => LoraModel.fromPretrained(tinyModules(), a)).toThrow(/the ranks differ, so check r and rank_pattern in adapter_config.json/);
  });
});

test('after mergeAndUnload, printTrainableParameters throws StateError like every other call', () => {
  const model = LoraModel.fromPretrained(tinyModules(), ADAPTER);
  expect(model.printTrainableParameters(() => undefined)).toMatch(/^trainable params: 0 \|\| all params: /);
  model.mergeAndUnload();
  for (const call of [() => model.printTrainableParameters(() => undefined), () => model.getNbTrainableParameters(), () => model.parameters(), () => model.setAdapter('default')])
    expect(call).toThrow(expect.objectContaining({ name: 'StateError', message: expect.stringMatching(/already unloaded/) }));
});

test('demo --device cuda without a usable CUDA backend says why, from backendInfo().cudaUnavailable', () => {
  const { backendInfo } = require('../lib') as typeof import('../lib');
  const { checkDevice } = require('../lib/demo/run') as typeof import('../lib/demo/run');
  const info = backendInfo();
  if (info.usable.includes('cuda')) {
    expect(info.cudaUnavailable).toBeNull();
    return;
  }
  expect(typeof info.cudaUnavailable).toBe('string');
  expect(info.cudaUnavailable!.length).toBeGreaterThan(10);
  if (!info.compiled.includes('cuda')) expect(info.cudaUnavailable).toMatch(/when the addon was built|LORAKIT_CUDA=OFF|node-gyp|without the CUDA backend/);
  let msg = '';
  try {
    checkDevice('cuda');
  } catch (e) {
    expect((e as Error).name).toBe('StateError');
    msg = (e as Error).message;
  }
  expect(msg).toContain(info.cudaUnavailable!);
  expect(msg).toMatch(/use --device cpu/);
});
