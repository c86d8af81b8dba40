/**
 * README.md's TypeScript compiles under `tsc --strict` against the package's types and runs as
 * written (scripts/check-readme-snippets.js; dist/ is built by `npm test`'s pretest), and the
 * checker itself catches a snippet that uses a name from nowhere or fails when run.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const script = path.join(__dirname, '..', 'scripts', 'check-readme-snippets.js');
const check = (...args: string[]) => spawnSync(process.execPath, [script, ...args], { encoding: 'utf8', timeout: 300000 });

test('every ```ts block of README.md type-checks and runs', () => {
  const r = check('--run');
  expect(`${r.stdout}${r.stderr}`).toMatch(/all \d+ blocks run/);
  expect(r.status).toBe(0);
}, 300000);

describe('the checker', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-readme-test-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('reports a type error at its README line', () => {
    const f = path.join(dir, 'README.md');
    fs.writeFileSync(f, ['# t', '', '```ts', "import { LoraModel } from 'lorakit';", '', 'model.printTrainableParameters();', '```', ''].join('\n'));
    const r = check('--readme', f);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/README.md:6:1: error TS2304: Cannot find name 'model'/);
    expect(r.stderr.match(/error TS/g)).toHaveLength(1);
  });

  test('reports a block that compiles but fails when run', () => {
    const f = path.join(dir, 'README.md');
    fs.writeFileSync(f, ['```ts', "import { LoraLinear, Tensor } from 'lorakit';", '', "new LoraLinear({ weight: Tensor.zeros([4, 4]) }).forward(Tensor.zeros([2, 3]));", '```', ''].join('\n'));
    const r = check('--readme', f, '--run');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/README.md:2: the block exits with 1/);
    expect(r.stderr).toMatch(/ShapeError/);
  }, 60000);
});
