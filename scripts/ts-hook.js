// Loads .ts files by transpiling them with the project's TypeScript (no type check), so child
// processes and worker threads of the tests and the fuzz run the same lib/ sources as jest does.
// Outputs are cached by content hash, so only changed files pay for the TypeScript compiler.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');

const cacheDir = path.join(os.tmpdir(), `lorakit-ts-hook-${typeof process.getuid === 'function' ? process.getuid() : 'user'}`);
let ts = null;

require.extensions['.ts'] = function loadTs(module, filename) {
  const src = fs.readFileSync(filename, 'utf8');
  const key = crypto.createHash('sha1').update(filename).update('\0').update(src).digest('hex');
  const cached = path.join(cacheDir, `${key}.js`);
  let out;
  try {
    out = fs.readFileSync(cached, 'utf8');
  } catch {
    ts = ts || require('typescript');
    out = ts.transpileModule(src, {
      fileName: filename,
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true, sourceMap: false },
    }).outputText;
    try {
      fs.mkdirSync(cacheDir, { recursive: true });
      const tmp = `${cached}.${process.pid}.${Math.random().toString(16).slice(2)}.tmp`;
      fs.writeFileSync(tmp, out);
      fs.renameSync(tmp, cached); // atomic: concurrent loaders never read half a file
    } catch {
      // no cache (read-only tree): transpile every time
    }
  }
  module._compile(out, filename);
};
