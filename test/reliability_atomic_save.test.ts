/**
 * Saving never loses data: a process killed (SIGKILL) in the middle of a save leaves the previous
 * adapter files intact, and the target is never a torn mix of old and new bytes.
 */
import { ChildProcess, spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LoraModel, SafetensorsReader, Tensor } from '../lib';
import { AtomicWriter, writeFileAtomicSync } from '../lib/io/atomic';

const ROOT = path.join(__dirname, '..');
const WEIGHTS = 'adapter_model.safetensors';

function startChild(mode: string, dir: string): { child: ChildProcess; lines: string[]; waitFor: (re: RegExp) => Promise<string>; exited: Promise<NodeJS.Signals | null> } {
  const child = spawn(process.execPath, ['-r', './scripts/ts-hook.js', 'test/helpers/save_child.ts', mode, dir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: Array<{ re: RegExp; resolve: (l: string) => void }> = [];
  let buf = '';
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  child.stdout!.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      for (const w of waiters.splice(0)) (w.re.test(line) ? w.resolve(line) : waiters.push(w));
    }
  });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
  const waitFor = (re: RegExp) =>
    new Promise<string>((resolve, reject) => {
      const hit = lines.find((l) => re.test(l));
      if (hit) return resolve(hit);
      waiters.push({ re, resolve });
      void exited.then(() => reject(new Error(`child exited before ${re}: ${stderr.slice(-2000)}`)));
    });
  return { child, lines, waitFor, exited };
}

const sha1 = (f: string) => crypto.createHash('sha1').update(fs.readFileSync(f)).digest('hex');

function loadsBack(dir: string): void {
  const r = new SafetensorsReader(path.join(dir, WEIGHTS));
  try {
    expect(r.names.length).toBe(16);
    for (const n of r.names) expect(r.float32(n).length).toBeGreaterThan(0);
  } finally {
    r.close();
  }
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  expect(cfg.r).toBe(64);
  const modules = Array.from({ length: 8 }, (_, i) => ({ name: `layers.${i}.proj`, kind: 'linear' as const, weight: Tensor.zeros([256, 256]) }));
  const m = LoraModel.fromPretrained(modules, dir);
  expect(m.targetedModules().length).toBe(8);
}

describe('atomic saves survive SIGKILL', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-kill-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('killed halfway through a streaming overwrite: the earlier file is intact, the partial one is only a temp file', async () => {
    const c = startChild('stream', dir);
    const saved = (await c.waitFor(/^SAVED 0 /)).split(' ')[2];
    await c.waitFor(/^MIDWAY$/);
    const temps = fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'));
    expect(temps.length).toBe(1); // the new bytes went to a temp file beside the target
    c.child.kill('SIGKILL');
    expect(await c.exited).toBe('SIGKILL');
    expect(sha1(path.join(dir, WEIGHTS))).toBe(saved);
    expect(fs.statSync(path.join(dir, temps[0])).size).toBeLessThan(16 << 20); // torn, and never renamed
    loadsBack(dir);
    // The next write of that file clears the dead writer's temp instead of letting them pile up.
    writeFileAtomicSync(path.join(dir, WEIGHTS), fs.readFileSync(path.join(dir, WEIGHTS)));
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    loadsBack(dir);
  });

  test("a live writer's temp file is never removed by another save", () => {
    const target = path.join(dir, 'x.bin');
    const w = new AtomicWriter(target);
    try {
      w.write(new Uint8Array([1, 2, 3]));
      writeFileAtomicSync(target, new Uint8Array([9]));
      expect(fs.existsSync(w.tempPath)).toBe(true);
      w.commit();
      expect(Array.from(fs.readFileSync(target))).toEqual([1, 2, 3]);
    } finally {
      w.abort();
    }
  });

  test('killed at an arbitrary moment of repeated saves: the target is always one complete version', async () => {
    const c = startChild('loop', dir);
    await c.waitFor(/^SAVED 0 /);
    await c.waitFor(/^SAVING 2$/); // inside the third save
    await new Promise((r) => setTimeout(r, 40 + Math.random() * 80));
    c.child.kill('SIGKILL');
    expect(await c.exited).toBe('SIGKILL');
    const versions = c.lines.filter((l) => l.startsWith('SAVED ')).map((l) => l.split(' ')[2]);
    const now = sha1(path.join(dir, WEIGHTS));
    // Either the last completed version or the one in flight, if its rename had happened: never a mix.
    const r = new SafetensorsReader(path.join(dir, WEIGHTS));
    try {
      const a0 = r.float32(r.names.find((n) => n.includes('lora_A'))!);
      const v = a0[0];
      expect(a0.every((x) => x === v)).toBe(true); // one version's bytes throughout
      const lastDone = versions.length - 1;
      if (versions.includes(now)) expect(now).toBe(versions[lastDone]);
      else expect(Math.round(v)).toBe(lastDone + 1); // the in-flight save completed its rename before the kill
    } finally {
      r.close();
    }
  }, 30000);
});
