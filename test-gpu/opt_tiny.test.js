// peft's opt_tiny case on cuda: the base model's tensors on the GPU, peft's adapter directory
// loaded onto them, mergeAndUnload equal to peft's merged_model.safetensors within 1e-5 (every
// tensor), and a targeted layer's forward equal to the cpu's.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const path = require('path');
const { lk, GOLDEN, expectClose, relErr, randomArray } = require('./helpers');
const { Checkpoint, LoraModel, Tensor, modulesFromStateDict } = lk;

const TINY = path.join(GOLDEN, 'opt_tiny');

function loadTiny(device) {
  const ck = Checkpoint.open(path.join(TINY, 'base_model.safetensors'));
  const tensors = new Map();
  for (const n of ck.names) {
    const t = ck.tensor(n);
    tensors.set(n, device === 'cpu' ? t : t.to({ device }));
  }
  const modules = modulesFromStateDict(tensors, { aliases: ck.aliases });
  ck.close();
  return modules;
}

test('opt_tiny on cuda: peft adapter loads onto cuda weights; mergeAndUnload matches peft within 1e-5', () => {
  const model = LoraModel.fromPretrained(loadTiny('cuda'), path.join(TINY, 'adapter'));
  const name = 'model.decoder.layers.1.self_attn.v_proj';
  const layer = model.layers.get(name);
  assert.strictEqual(layer.device, 'cuda');
  assert.strictEqual(layer.loraA.get('default').device, 'cuda');
  const cpu = LoraModel.fromPretrained(loadTiny('cpu'), path.join(TINY, 'adapter')).layers.get(name);
  layer.eval(); // peft's config has dropout
  cpu.eval();
  const x = randomArray(5 * layer.inFeatures, 11);
  const yg = layer.forward(Tensor.from(x, [5, layer.inFeatures], { device: 'cuda' })).toFloat32Array();
  const yc = cpu.forward(Tensor.from(x, [5, cpu.inFeatures])).toFloat32Array();
  assert.ok(relErr(yg, yc) <= 1e-5, `forward: ${relErr(yg, yc)}`);
  // the whole model on a stream of its own: same output; a layer added later joins it
  const s = lk.cuda.createStream();
  model.stream = s;
  assert.strictEqual(layer.stream, s);
  const ys = layer.forward(Tensor.from(x, [5, layer.inFeatures], { device: 'cuda' })).toFloat32Array();
  assert.ok(ys.every((v, i) => Object.is(v, yg[i])), 'forward on the model stream');
  model.addAdapter('extra', { targetModules: ['fc1'], r: 2 });
  assert.strictEqual(model.layers.get('model.decoder.layers.0.fc1').stream, s);
  model.deleteAdapter('extra');
  model.stream = null;
  s.dispose();
  const merged = model.mergeAndUnload();
  const ref = Checkpoint.open(path.join(TINY, 'merged_model.safetensors'));
  assert.deepStrictEqual([...merged.keys()].sort(), [...ref.names].sort());
  let changed = 0;
  for (const n of ref.names) {
    expectClose(merged.get(n).toFloat32Array(), ref.readerOf(n).float32(n), 1e-5, n);
    if (n.includes('q_proj.weight') || n.includes('v_proj.weight')) {
      assert.strictEqual(merged.get(n).device, 'cuda', n);
      changed++;
    }
  }
  assert.strictEqual(changed, 4);
  ref.close();
});
