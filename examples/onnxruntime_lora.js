#!/usr/bin/env node
/**
 * peft adapters merged into the weights onnxruntime-node runs, in place and without copies.
 *
 * The ONNX model here (a 2-layer MLP, x → Gemm → Relu → Gemm → y) takes its two weight matrices
 * as graph inputs, so the Float32Arrays fed to the session are the weights themselves.
 * Tensor.wrap hands lorakit those same arrays: mergeAdapter() writes W + s·B·A into them, the
 * session runs the adapted model, unmergeAdapter() restores them, and switching adapters is an
 * unmerge plus a merge, with no copy of any weight. Each output is checked against a float64
 * reference; the exit code is non-zero when one differs.
 *
 *   node examples/onnxruntime_lora.js [--adapter DIR] [--save-onnx FILE]
 *
 * --adapter: a peft adapter for modules fc1 [128, 64] and fc2 [32, 128] (default: two seeded
 * adapters made here with lorakit). --save-onnx: also write the model (to open it in Netron).
 */
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const ort = require('onnxruntime-node');
const { LoraModel, Rng, Tensor } = require('lorakit'); // this package (self-reference through "exports")

const IN = 64, HIDDEN = 128, OUT = 32, N = 8;

// ---- a minimal protobuf writer: enough of onnx.proto for this graph -----------------------------
const varint = (n) => {
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return Buffer.from(out);
};
const int = (field, n) => Buffer.concat([varint(field << 3), varint(n)]); // wire type 0
const bytes = (field, b) => Buffer.concat([varint((field << 3) | 2), varint(b.length), b]); // wire type 2
const str = (field, s) => bytes(field, Buffer.from(s, 'utf8'));
const msg = (field, ...parts) => bytes(field, Buffer.concat(parts));

const FLOAT = 1; // TensorProto.DataType
// ValueInfoProto { name = 1; type = 2 }, TypeProto { tensor_type = 1 }, TypeProto.Tensor { elem_type = 1; shape = 2 },
// TensorShapeProto { dim = 1 }, Dimension { dim_value = 1; dim_param = 2 }
const valueInfo = (name, dims) =>
  Buffer.concat([str(1, name), msg(2, msg(1, int(1, FLOAT), msg(2, ...dims.map((d) => msg(1, typeof d === 'string' ? str(2, d) : int(1, d))))))]);
// NodeProto { input = 1; output = 2; name = 3; op_type = 4; attribute = 5 }, AttributeProto { name = 1; i = 3; type = 20 (INT = 2) }
const node = (op, inputs, outputs, attrs = {}) =>
  Buffer.concat([
    ...inputs.map((i) => str(1, i)),
    ...outputs.map((o) => str(2, o)),
    str(3, `${op}_${outputs[0]}`),
    str(4, op),
    ...Object.entries(attrs).map(([k, v]) => msg(5, str(1, k), int(3, v), int(20, 2))),
  ]);
// TensorProto { dims = 1; data_type = 2; name = 8; raw_data = 9 } (little-endian floats)
const initializer = (name, values) =>
  Buffer.concat([int(1, values.length), int(2, FLOAT), str(8, name), bytes(9, Buffer.from(values.buffer, values.byteOffset, values.byteLength))]);

/** ModelProto { ir_version = 1; producer_name = 2; graph = 7; opset_import = 8 } of the MLP, biases as initializers. */
function mlpOnnx(b1, b2) {
  const graph = Buffer.concat([
    msg(1, node('Gemm', ['x', 'fc1_weight', 'fc1_bias'], ['h'], { transB: 1 })), // h = x·W1ᵀ + b1
    msg(1, node('Relu', ['h'], ['a'])),
    msg(1, node('Gemm', ['a', 'fc2_weight', 'fc2_bias'], ['y'], { transB: 1 })), // y = a·W2ᵀ + b2
    str(2, 'mlp'),
    msg(5, initializer('fc1_bias', b1)),
    msg(5, initializer('fc2_bias', b2)),
    msg(11, valueInfo('x', ['N', IN])),
    msg(11, valueInfo('fc1_weight', [HIDDEN, IN])),
    msg(11, valueInfo('fc2_weight', [OUT, HIDDEN])),
    msg(12, valueInfo('y', ['N', OUT])),
  ]);
  return Buffer.concat([int(1, 8), str(2, 'lorakit-example'), msg(7, graph), msg(8, str(1, ''), int(2, 17))]);
}

// ---- float64 reference --------------------------------------------------------------------------
/** W + s·B·A for every adapter given, in float64. */
function effective(W0, rows, cols, adapters) {
  const W = Float64Array.from(W0);
  for (const { A, B, s, r } of adapters)
    for (let o = 0; o < rows; o++)
      for (let k = 0; k < r; k++) {
        const bs = s * B[o * r + k];
        for (let i = 0; i < cols; i++) W[o * cols + i] += bs * A[k * cols + i];
      }
  return W;
}

function mlpReference(x, W1, b1, W2, b2) {
  const y = new Float64Array(N * OUT);
  const a = new Float64Array(HIDDEN);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < HIDDEN; h++) {
      let acc = b1[h];
      for (let i = 0; i < IN; i++) acc += x[n * IN + i] * W1[h * IN + i];
      a[h] = Math.max(0, acc);
    }
    for (let o = 0; o < OUT; o++) {
      let acc = b2[o];
      for (let h = 0; h < HIDDEN; h++) acc += a[h] * W2[o * HIDDEN + h];
      y[n * OUT + o] = acc;
    }
  }
  return y;
}

function maxRelErr(got, want) {
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    num = Math.max(num, Math.abs(got[i] - want[i]));
    den = Math.max(den, Math.abs(want[i]));
  }
  return num / Math.max(den, 1e-30);
}

/** Two seeded peft adapters for fc1/fc2, written as save_pretrained writes them. */
function makeAdapters(dir) {
  const made = [];
  for (const [name, seed, r] of [['default', 11, 4], ['other', 12, 8]]) {
    const m = new LoraModel(
      [{ name: 'fc1', kind: 'linear', weight: Tensor.zeros([HIDDEN, IN]) }, { name: 'fc2', kind: 'linear', weight: Tensor.zeros([OUT, HIDDEN]) }],
      { targetModules: ['fc1', 'fc2'], r, loraAlpha: 2 * r, initLoraWeights: false, seed },
    );
    const out = path.join(dir, name);
    m.savePretrained(out);
    m.dispose();
    made.push(out);
  }
  return made;
}

async function main(argv) {
  const arg = (k) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : undefined);
  const rng = new Rng(5);
  const uniform = (n, scale) => rng.fillUniform(new Float32Array(n), -scale, scale);
  // The weights the runtime holds: plain Float32Arrays, fed to every run.
  const w1 = uniform(HIDDEN * IN, 0.15), w2 = uniform(OUT * HIDDEN, 0.1);
  const b1 = uniform(HIDDEN, 0.1), b2 = uniform(OUT, 0.1), x = uniform(N * IN, 1);
  const w1Base = Float64Array.from(w1), w2Base = Float64Array.from(w2);

  const onnx = mlpOnnx(b1, b2);
  if (arg('--save-onnx')) fs.writeFileSync(arg('--save-onnx'), onnx);
  const session = await ort.InferenceSession.create(onnx, { executionProviders: ['cpu'] });
  // The ort tensors view the same arrays (no copy), so they are made once and reused across merges.
  const feeds = {
    x: new ort.Tensor('float32', x, [N, IN]),
    fc1_weight: new ort.Tensor('float32', w1, [HIDDEN, IN]),
    fc2_weight: new ort.Tensor('float32', w2, [OUT, HIDDEN]),
  };
  const runModel = async () => Float32Array.from((await session.run(feeds)).y.data);

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-ort-'));
  const adapterDirs = arg('--adapter') ? [arg('--adapter')] : makeAdapters(tmp);
  const W1 = Tensor.wrap(w1, [HIDDEN, IN]); // lorakit's view of the runtime's arrays: no copy
  const W2 = Tensor.wrap(w2, [OUT, HIDDEN]);
  const model = LoraModel.fromPretrained([{ name: 'fc1', kind: 'linear', weight: W1 }, { name: 'fc2', kind: 'linear', weight: W2 }], adapterDirs[0]);
  adapterDirs.slice(1).forEach((d) => model.loadAdapter(d, path.basename(d)));

  const factors = (mod, name) => {
    const l = model.layers.get(mod);
    const A = l.loraA.get(name);
    return { A: A.toFloat32Array(), B: l.loraB.get(name).toFloat32Array(), s: l.scaling.get(name), r: A.shape[0] };
  };
  const results = [];
  const check = (what, got, want, vs, tol) => {
    const err = maxRelErr(got, want);
    results.push(err <= tol);
    console.log(`${what.padEnd(34)} max rel err vs ${vs} ${err.toExponential(2)} (${err <= tol ? 'ok' : `FAIL, tolerance ${tol}`})`);
  };

  const base = await runModel();
  check('base model', base, mlpReference(x, w1Base, b1, w2Base, b2), 'float64', 1e-5);
  for (const name of model.adapterNames) {
    model.unmergeAdapter();
    model.setAdapter(name);
    model.mergeAdapter(); // W += s·B·A, written into w1 and w2 themselves
    const ref = mlpReference(x, effective(w1Base, HIDDEN, IN, [factors('fc1', name)]), b1, effective(w2Base, OUT, HIDDEN, [factors('fc2', name)]), b2);
    check(`adapter '${name}' merged in place`, await runModel(), ref, 'float64', 1e-5);
  }
  model.unmergeAdapter(); // back to the base weights, up to f32 rounding
  check('unmerged again', await runModel(), base, 'the base run', 1e-5);
  let restored = 0;
  for (let i = 0; i < w1.length; i++) restored = Math.max(restored, Math.abs(w1[i] - w1Base[i]));
  console.log(`fc1 weight after unmerge: max |w - w_base| ${restored.toExponential(2)}`);

  model.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
  return results.every(Boolean) ? 0 : 1;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      console.error(`onnxruntime_lora: ${err.stack || err.message}`);
      process.exit(1);
    },
  );
}
module.exports = { mlpOnnx, main };
