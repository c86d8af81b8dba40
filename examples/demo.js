#!/usr/bin/env node
// `npm run demo`: fine-tunes LoRA adapters on a small frozen MLP on the CPU (no downloads), then
// merges them and checks the result. The code is lib/demo/run.ts; options: --help.
'use strict';
const { run } = require('../dist/cli/demo.js');

run(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`demo: ${err.message}`);
    process.exit(1);
  },
);
