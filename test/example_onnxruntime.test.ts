/**
 * examples/onnxruntime_lora.js runs as shipped: onnxruntime-node (CPU) runs a model whose weights
 * are graph inputs, lorakit merges two peft adapters into those same Float32Arrays through
 * Tensor.wrap (a copy instead would leave the merged runs equal to the base one and fail), and
 * every output matches a float64 reference.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const example = path.join(__dirname, '..', 'examples', 'onnxruntime_lora.js');

test('the onnxruntime-node example merges, switches and unmerges adapters in place', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-ort-test-'));
  try {
    const onnx = path.join(dir, 'mlp.onnx');
    const r = spawnSync(process.execPath, [example, '--save-onnx', onnx], { encoding: 'utf8', timeout: 120000 });
    expect(r.stderr).toBe('');
    // Under npm run test:asan, LeakSanitizer sets the exit status for node's own leaks at exit.
    if (!/asan/.test(process.env.LD_PRELOAD ?? '')) expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.filter((l) => /\(ok\)$/.test(l))).toHaveLength(4);
    expect(r.stdout).toMatch(/adapter 'default' merged in place\s+max rel err vs float64 \S+ \(ok\)/);
    expect(r.stdout).toMatch(/adapter 'other' merged in place/);
    expect(fs.readFileSync(onnx).subarray(0, 2)).toEqual(Buffer.from([0x08, 0x08])); // ModelProto.ir_version = 8
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
