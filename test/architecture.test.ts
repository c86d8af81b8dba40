/** scripts/check-architecture.js: lib/ has no import cycle and no forbidden import. */
import * as path from 'path';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const arch = require(path.join(__dirname, '..', 'scripts', 'check-architecture.js')) as {
  check(): { files: number; cycles: string[][]; violations: Array<{ from: string; to: string }> };
  checkSources(): string[];
  findCycles(g: Map<string, Set<string>>): string[][];
  importGraph(): Map<string, Set<string>>;
};

test('lib/ has no import cycle and no forbidden import', () => {
  const r = arch.check();
  expect(r.files).toBeGreaterThan(40);
  expect(r.cycles).toEqual([]);
  expect(r.violations).toEqual([]);
});

test('adapter_io never imports lora_model; lora_model imports adapter_io', () => {
  const g = arch.importGraph();
  expect([...g.get('lib/model/adapter_io.ts')!]).not.toContain('lib/model/lora_model.ts');
  expect([...g.get('lib/model/lora_model.ts')!]).toContain('lib/model/adapter_io.ts');
  expect([...g.get('lib/model/stream_merge.ts')!]).toContain('lib/model/factors.ts');
});

test('findCycles reports each cycle once, as a closed path', () => {
  const g = new Map<string, Set<string>>([
    ['a', new Set(['b'])],
    ['b', new Set(['c'])],
    ['c', new Set(['a', 'd'])],
    ['d', new Set()],
    ['e', new Set(['e'])],
  ]);
  const cycles = arch.findCycles(g);
  expect(cycles).toHaveLength(2);
  expect(cycles).toContainEqual(['a', 'b', 'c', 'a']);
  expect(cycles).toContainEqual(['e', 'e']);
});

test('the source rules hold: no cpu include under native/cuda, no device branch in layers/train, file lengths, names', () => {
  expect(arch.checkSources()).toEqual([]);
});

test('the source rules catch a cuda file including a cpu header, a device branch, a long file and a milestone name', () => {
  const fs = require('fs') as typeof import('fs');
  const os = require('os') as typeof import('os');
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lk-arch-'));
  try {
    fs.mkdirSync(path.join(root, 'native/cuda'), { recursive: true });
    fs.mkdirSync(path.join(root, 'lib/layers'), { recursive: true });
    fs.mkdirSync(path.join(root, 'test'), { recursive: true });
    fs.writeFileSync(path.join(root, 'native/cuda/k.cu'), '#include "../cpu/ops.h"\n');
    fs.writeFileSync(path.join(root, 'lib/layers/x.ts'), "if (dev === 'cuda') {}\n");
    fs.writeFileSync(path.join(root, 'lib/long.ts'), 'x;\n'.repeat(700));
    fs.writeFileSync(path.join(root, 'test/parity_stuff.test.ts'), 'x;\n');
    const problems = (arch as unknown as { checkSources(r: string): string[] }).checkSources(root);
    expect(problems.some((p) => p.startsWith('native/cuda/k.cu:1'))).toBe(true);
    expect(problems.some((p) => p.startsWith('lib/layers/x.ts:1'))).toBe(true);
    expect(problems.some((p) => p.startsWith('lib/long.ts: 701 lines'))).toBe(true);
    expect(problems.some((p) => p.includes('parity_stuff') && p.includes('milestone'))).toBe(true);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
