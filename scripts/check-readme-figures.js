#!/usr/bin/env node
/**
 * Checks the README's measured figures against bench/results: every passage between
 * `<!-- figures -->` and `<!-- /figures -->` is split into items (its `- ` bullets, or the whole
 * passage); each item must name at least one existing `bench/results/...` file in backticks, and
 * every number in it must appear in one of the files it names (as a number of its own: 0.95 does
 * not match 0.951 or 10.95). Numbers glued to letters (f32, bf16, H200) are names, not figures.
 * Exits 1 with the offending items. `npm test` runs it (test/readme_figures.test.ts).
 *   node scripts/check-readme-figures.js [README.md]
 */
'use strict';
const fs = require('fs');
const path = require('path');

const NUMBER = /(?<![\w.])\d+(?:\.\d+)*/g; // a version such as 0.21.0 is one figure
const CITED = /`(bench\/results\/[^`]+)`/g;

function escape(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Problems found (empty: all figures check out) and how many figures were checked. */
function checkFigures(readme, root) {
  const problems = [];
  let figures = 0;
  const blocks = [...readme.matchAll(/<!-- figures -->([\s\S]*?)<!-- \/figures -->/g)].map((m) => m[1]);
  if (blocks.length === 0) problems.push('no <!-- figures --> ... <!-- /figures --> passage in the README');
  const cache = new Map();
  const read = (f) => {
    if (!cache.has(f)) cache.set(f, fs.existsSync(path.join(root, f)) && fs.statSync(path.join(root, f)).isFile() ? fs.readFileSync(path.join(root, f), 'utf8') : null);
    return cache.get(f);
  };
  for (const block of blocks) {
    const bullets = block.split(/\n(?=- )/).map((s) => s.trim()).filter((s) => s.length > 0);
    for (const item of bullets) {
      const short = item.replace(/\s+/g, ' ').slice(0, 90);
      const files = [...item.matchAll(CITED)].map((m) => m[1]);
      if (files.length === 0) {
        problems.push(`names no bench/results file: "${short}..."`);
        continue;
      }
      const texts = [];
      for (const f of files) {
        const t = read(f);
        if (t === null) problems.push(`${f}: no such file (cited by "${short}...")`);
        else texts.push(t);
      }
      const prose = item.replace(CITED, ' ');
      for (const m of prose.matchAll(NUMBER)) {
        figures++;
        const re = new RegExp(`(?<![\\w.])${escape(m[0])}(?![\\d]|\\.\\d)`);
        if (!texts.some((t) => re.test(t))) problems.push(`${m[0]}: not in ${files.join(', ')} (in "${short}...")`);
      }
    }
  }
  return { problems, figures };
}

module.exports = { checkFigures };

if (require.main === module) {
  const root = path.resolve(__dirname, '..');
  const readme = process.argv[2] || path.join(root, 'README.md');
  const { problems, figures } = checkFigures(fs.readFileSync(readme, 'utf8'), root);
  for (const p of problems) console.log(`FAIL ${p}`);
  console.log(`check-readme-figures: ${figures} figures checked, ${problems.length} problem(s)`);
  process.exit(problems.length ? 1 : 0);
}
