/** Whole-model async forms: merges off the JS thread and async saves give the sync results. */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LoraModel, Tensor } from '../lib';
import { randomArray } from './helpers/reference';

function model(seed: number): { m: LoraModel; weights: Tensor[] } {
  const weights: Tensor[] = [];
  const modules = ['q_proj', 'k_proj', 'v_proj'].flatMap((p, i) =>
    [0, 1].map((layer) => {
      const w = Tensor.from(randomArray(48 * 40, seed + 10 * layer + i, 0.3), [48, 40]);
      weights.push(w);
      return { name: `layers.${layer}.${p}`, kind: 'linear' as const, weight: w };
    }),
  );
  const m = new LoraModel(modules, { targetModules: ['q_proj', 'v_proj'], r: 4, loraAlpha: 8, initLoraWeights: false, seed });
  return { m, weights };
}

const bits = (t: Tensor) => Array.from(t.toFloat32Array());

describe('LoraModel async forms', () => {
  test('mergeAdapterAsync / unmergeAdapterAsync equal the sync merge and unmerge', async () => {
    const a = model(3);
    const b = model(3);
    const before = a.weights.map(bits);
    a.m.mergeAdapter({ safeMerge: true });
    await b.m.mergeAdapterAsync({ safeMerge: true });
    b.weights.forEach((w, i) => expect(bits(w)).toEqual(bits(a.weights[i])));
    expect(b.weights.some((w, i) => bits(w).some((v, j) => v !== before[i][j]))).toBe(true); // something merged
    a.m.unmergeAdapter();
    await b.m.unmergeAdapterAsync();
    b.weights.forEach((w, i) => expect(bits(w)).toEqual(bits(a.weights[i])));
  });

  test('mergeAndUnloadAsync returns the same state dict as mergeAndUnload', async () => {
    const a = model(5);
    const b = model(5);
    const sa = a.m.mergeAndUnload();
    const sb = await b.m.mergeAndUnloadAsync();
    expect([...sb.keys()]).toEqual([...sa.keys()]);
    for (const [k, t] of sa) expect(bits(sb.get(k)!)).toEqual(bits(t));
    await expect(b.m.mergeAdapterAsync()).rejects.toThrow();
  });

  test('savePretrainedAsync writes the same files as savePretrained; fromPretrainedAsync / loadAdapterAsync read them back', async () => {
    const { m } = model(7);
    m.addAdapter('other', { targetModules: ['k_proj'], r: 2, initLoraWeights: false, seed: 1 });
    const d1 = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-save-sync-'));
    const d2 = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-save-async-'));
    try {
      m.savePretrained(d1);
      const pending = m.savePretrainedAsync(d2);
      await pending;
      const list = (d: string): string[] =>
        fs.readdirSync(d, { recursive: true }).map(String).filter((f) => fs.statSync(path.join(d, f)).isFile()).sort();
      expect(list(d2)).toEqual(list(d1));
      expect(list(d2).some((f) => f.endsWith('.tmp'))).toBe(false);
      for (const f of list(d1)) {
        const h = (d: string) => crypto.createHash('sha1').update(fs.readFileSync(path.join(d, f))).digest('hex');
        expect(h(d2)).toBe(h(d1));
      }
      // Read back with the async reader: the same factors as the sync reader gives.
      const specs = () => ['q_proj', 'k_proj', 'v_proj'].flatMap((p) => [0, 1].map((l) => ({ name: `layers.${l}.${p}`, kind: 'linear' as const, weight: Tensor.zeros([48, 40]) })));
      const back = await LoraModel.fromPretrainedAsync(specs(), d2);
      const ref = LoraModel.fromPretrained(specs(), d1);
      expect(back.targetedModules()).toEqual(ref.targetedModules());
      for (const mod of ref.targetedModules()) {
        expect(bits(back.layers.get(mod)!.loraA.get('default')!)).toEqual(bits(ref.layers.get(mod)!.loraA.get('default')!));
        expect(bits(back.layers.get(mod)!.loraB.get('default')!)).toEqual(bits(m.layers.get(mod)!.loraB.get('default')!));
      }
      await back.loadAdapterAsync(path.join(d2, 'other'), 'other');
      expect(bits(back.layers.get('layers.0.k_proj')!.loraA.get('other')!)).toEqual(bits(m.layers.get('layers.0.k_proj')!.loraA.get('other')!));
      await expect(LoraModel.fromPretrainedAsync(specs(), path.join(d2, 'missing'))).rejects.toThrow(/dir: no adapter folder at/);
    } finally {
      fs.rmSync(d1, { recursive: true, force: true });
      fs.rmSync(d2, { recursive: true, force: true });
    }
  });
});
