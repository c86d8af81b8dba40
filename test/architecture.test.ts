/** scripts/check-architecture.js: lib/ has no import cycle and no forbidden import. */
import * as path from 'path';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const arch = require(path.join(__dirname, '..', 'scripts', 'check-architecture.js')) as {
  check(): { files: number; cycles: string[][]; violations: Array<{ from: string; to: string }> };
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
