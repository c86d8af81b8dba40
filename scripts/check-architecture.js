#!/usr/bin/env node
/**
 * Checks lib/'s import graph: no import cycles (type-only imports count too: a cycle of types is
 * still two modules that cannot be understood apart), and no import a rule forbids. Reads the
 * import/export-from/require lines of lib/**\/*.ts; relative specifiers only.
 *
 *   node scripts/check-architecture.js          prints the cycles and broken rules, exit 1 if any
 *   require('./scripts/check-architecture.js')  { importGraph, findCycles, checkRules, RULES, check }
 */
'use strict';
const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..');

/**
 * Forbidden imports: a file matching `from` may not import a file matching `to`, unless it matches
 * `except`. Paths are relative to the repository root, '/'-separated.
 */
const RULES = [
  {
    from: /^lib\/model\/adapter_io\.ts$/,
    to: /^lib\/model\/lora_model\.ts$/,
    why: 'adapter_io reads and writes against the AdapterHost interface (model/adapter_host.ts), as peft\'s save_and_load takes the model as an argument',
  },
  {
    from: /^lib\/layers\//,
    to: /^lib\/model\//,
    except: /^lib\/model\/factors\.ts$/,
    why: 'layers sit below the model; the only model file they share is factors.ts (scaling, factor shapes)',
  },
  {
    from: /^lib\/layers\//,
    to: /^lib\/train\//,
    why: 'data flows x → forward → backward → optimizer: layers hand out Parameters (lib/parameter.ts) and never see the optimizer',
  },
  {
    from: /^lib\/(layers|train|io)\//,
    to: /^lib\/(cli|bench|demo)\//,
    why: 'the CLI, benchmarks and demo sit on top of the library, never below it',
  },
];

// Source-level rules beyond imports: each finds offending lines in files under `dir` matching `file`.
const LINE_RULES = [
  {
    dir: 'native/cuda',
    file: /\.(cu|cuh|h|cc)$/,
    line: /#\s*include\s*"[^"]*\bcpu\//,
    why: 'the cuda backend depends on native/core only (argument types live in core/op_args.h)',
  },
  {
    dir: 'lib/layers',
    file: /\.ts$/,
    line: /[!=]==\s*'cuda'|'cuda'\s*[!=]==/,
    why: 'layers never branch on device: scratch dtypes and forward paths are the backend\'s business (lib/backend.ts)',
  },
  {
    dir: 'lib/train',
    file: /\.ts$/,
    line: /[!=]==\s*'cuda'|'cuda'\s*[!=]==/,
    why: 'training code never branches on device: every optimizer op exists on each backend',
  },
  {
    dir: 'native/napi',
    file: /\.(cc|h)$/,
    line: /\bon_device\s*\(/,
    why: 'bindings call backend_for(device).op, never per-device pairs',
  },
];

// File names that say when or why code was written rather than what it does.
const MILESTONE_NAME = /(^|[_\-/])(parity|milestone|phase\d*|round\d*|session\d*|new|old|v\d+)([_\-.]|$)/i;
const MAX_LINES = 600;
const SOURCE_DIRS = ['lib', 'native', 'scripts', 'bench', 'test', 'test-gpu', 'examples'];
const SOURCE_FILE = /\.(ts|js|mjs|cc|cu|cuh|h|c|py|sh)$/;

function listFiles(dir, re) {
  const out = [];
  if (!fs.existsSync(dir)) return out;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'node_modules' && e.name !== 'fixtures' && e.name !== 'results') out.push(...listFiles(p, re));
    } else if (e.isFile() && re.test(e.name)) out.push(p);
  }
  return out.sort();
}

/** Line rules, file lengths and file names over the source folders. */
function checkSources(root = ROOT) {
  const problems = [];
  for (const r of LINE_RULES)
    for (const f of listFiles(path.join(root, r.dir), r.file)) {
      const rel = path.relative(root, f).split(path.sep).join('/');
      fs.readFileSync(f, 'utf8').split('\n').forEach((l, i) => {
        if (r.line.test(l) && !/^\s*(\/\/|\*)/.test(l)) problems.push(`${rel}:${i + 1}: ${r.why}`);
      });
    }
  for (const d of SOURCE_DIRS)
    for (const f of listFiles(path.join(root, d), SOURCE_FILE)) {
      const rel = path.relative(root, f).split(path.sep).join('/');
      const n = fs.readFileSync(f, 'utf8').split('\n').length;
      if (n > MAX_LINES) problems.push(`${rel}: ${n} lines (limit ${MAX_LINES}): split it by job`);
      if (MILESTONE_NAME.test(path.basename(f).replace(SOURCE_FILE, '')))
        problems.push(`${rel}: named after a milestone, not a job`);
    }
  return problems;
}

// import x from '…', import type { x } from '…', export * from '…', import '…', require('…'), import('…')
const SPEC_RE = /(?:^|[\s;])(?:import|export)\s+(?:type\s+)?(?:[\w*{}\s,$]+?\s+from\s+)?['"]([^'"]+)['"]|\b(?:require|import)\(\s*['"]([^'"]+)['"]\s*\)/g;

function listTs(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...listTs(p));
    else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out.sort();
}

function rel(p) {
  return path.relative(ROOT, p).split(path.sep).join('/');
}

/** The .ts file a relative specifier names (x.ts, or x/index.ts), or null. */
function resolveSpec(fromFile, spec) {
  if (!spec.startsWith('.')) return null;
  const base = path.resolve(path.dirname(fromFile), spec);
  for (const c of [base, `${base}.ts`, path.join(base, 'index.ts')]) {
    if (c.endsWith('.ts') && fs.existsSync(c) && fs.statSync(c).isFile()) return c;
  }
  return null;
}

function stripComments(src) {
  return src.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
}

/** Map: file (repo-relative) → Set of the lib files it imports. */
function importGraph(libDir = path.join(ROOT, 'lib')) {
  const graph = new Map();
  for (const file of listTs(libDir)) {
    const deps = new Set();
    const src = stripComments(fs.readFileSync(file, 'utf8'));
    for (const m of src.matchAll(SPEC_RE)) {
      const target = resolveSpec(file, m[1] ?? m[2]);
      if (target) deps.add(rel(target));
    }
    graph.set(rel(file), deps);
  }
  return graph;
}

/** Every elementary cycle's strongly connected component (Tarjan), each as one cycle path through it. */
function findCycles(graph) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const comps = [];
  const visit = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const comp = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? new Set()).has(v)) comps.push(comp);
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  // One concrete loop per component (BFS from its first file back to itself), easier to read than the set.
  return comps.map((comp) => {
    const members = new Set(comp);
    const start = [...comp].sort()[0];
    const prev = new Map([[start, null]]);
    const queue = [start];
    while (queue.length) {
      const v = queue.shift();
      for (const w of graph.get(v) ?? []) {
        if (w === start) {
          const loop = [start];
          for (let u = v; u !== start; u = prev.get(u)) loop.splice(1, 0, u);
          return [...loop, start];
        }
        if (members.has(w) && !prev.has(w)) {
          prev.set(w, v);
          queue.push(w);
        }
      }
    }
    return [...comp, comp[0]];
  });
}

/** The imports the rules forbid: { from, to, why }. */
function checkRules(graph, rules = RULES) {
  const out = [];
  for (const [from, deps] of graph)
    for (const to of deps)
      for (const r of rules)
        if (r.from.test(from) && r.to.test(to) && !(r.except && r.except.test(to))) out.push({ from, to, why: r.why });
  return out;
}

function check(libDir) {
  const graph = importGraph(libDir);
  return { files: graph.size, cycles: findCycles(graph), violations: checkRules(graph), sources: checkSources() };
}

module.exports = { importGraph, findCycles, checkRules, checkSources, RULES, LINE_RULES, check };

if (require.main === module) {
  const { files, cycles, violations, sources } = check();
  for (const c of cycles) console.log(`cycle: ${c.join(' -> ')}`);
  for (const v of violations) console.log(`forbidden import: ${v.from} -> ${v.to} (${v.why})`);
  for (const p of sources) console.log(p);
  console.log(`check-architecture: ${files} files, ${cycles.length} cycle(s), ${violations.length} forbidden import(s), ` +
    `${sources.length} source rule problem(s)`);
  process.exitCode = cycles.length || violations.length || sources.length ? 1 : 0;
}
