/** The README's measured figures each name a bench/results file that holds them (scripts/check-readme-figures.js). */
import * as fs from 'fs';
import * as path from 'path';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { checkFigures } = require('../scripts/check-readme-figures.js') as {
  checkFigures: (readme: string, root: string) => { problems: string[]; figures: number };
};
const ROOT = path.resolve(__dirname, '..');

test('every figure of the README performance passages is in the results file it names', () => {
  const { problems, figures } = checkFigures(fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8'), ROOT);
  expect(problems).toEqual([]);
  expect(figures).toBeGreaterThan(30);
});

test('the check catches a wrong figure, a missing file and an uncited line', () => {
  const file = '`bench/results/gpu-2026-11-29-01-21-11.md`';
  const bad = (s: string) => checkFigures(`<!-- figures -->\n${s}\n<!-- /figures -->`, ROOT).problems;
  expect(bad(`- merge 1.58-2.69x (${file}).`)).toEqual([]);
  expect(bad(`- merge 1.2-2.5x (${file}).`).join()).toMatch(/1\.2: not in/);
  expect(bad('- merge 1.58x (`bench/results/nope.md`).').join()).toMatch(/nope.md: no such file/);
  expect(bad('- merge 1.58x, no source.').join()).toMatch(/names no bench\/results file/);
  expect(checkFigures('no markers', ROOT).problems.join()).toMatch(/no <!-- figures -->/);
});
