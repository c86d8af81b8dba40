#!/usr/bin/env node
// Writes dist/index.mjs, an ES module facade over the CommonJS build, so that both
// `require('lorakit')` and `import { ... } from 'lorakit'` work. The names come from the
// compiled module itself (loading it does not load the native addon).
'use strict';
const fs = require('fs');
const path = require('path');
const dist = path.join(__dirname, '..', 'dist');
const names = Object.keys(require(path.join(dist, 'index.js'))).filter((n) => n !== 'default' && n !== '__esModule');
const body =
  "import cjs from './index.js';\n" +
  names.map((n) => `export const ${n} = cjs.${n};`).join('\n') +
  '\nexport default cjs;\n';
const tmp = path.join(dist, `index.mjs.${process.pid}.tmp`);
fs.writeFileSync(tmp, body);
fs.renameSync(tmp, path.join(dist, 'index.mjs'));
fs.copyFileSync(path.join(dist, 'index.d.ts'), path.join(dist, 'index.d.mts'));
