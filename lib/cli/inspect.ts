/** `lorakit inspect`: an adapter directory's config and factors, or a checkpoint's tensors. */
import * as fs from 'fs';
import * as path from 'path';
import { Checkpoint } from '../io/checkpoint';
import { CONFIG_FILE, WEIGHTS_FILE } from '../model/adapter_io';
import { parseArgs } from './_args';
import { inspectGguf, isGguf } from './_gguf';

export const summary = 'show an adapter (config, shapes, parameter counts), a .safetensors checkpoint or a GGUF file';

const USAGE = 'usage: lorakit inspect <adapter dir | file.safetensors | checkpoint dir | file.gguf> [--all] [--json]';

interface TensorRow {
  name: string;
  dtype: string;
  shape: number[];
  params: number;
}

function rows(ck: Checkpoint): TensorRow[] {
  return ck.names.map((n) => {
    const e = ck.entry(n);
    return { name: n, dtype: e.dtype, shape: e.shape, params: e.shape.reduce((a, b) => a * b, 1) };
  });
}

const fmt = (n: number) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');

function printRows(list: TensorRow[], all: boolean): void {
  const shown = all ? list : list.slice(0, 40);
  const w = Math.min(90, Math.max(...shown.map((r) => r.name.length), 4));
  for (const r of shown) console.log(`  ${r.name.padEnd(w)}  ${r.dtype.padEnd(5)} [${r.shape.join(', ')}]`);
  if (shown.length < list.length) console.log(`  ... ${list.length - shown.length} more (--all lists them)`);
}

export async function run(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs(argv, [], ['all', 'json', 'help']);
  } catch (e) {
    console.error(`lorakit inspect: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (args.flags.has('help')) {
    console.log(USAGE);
    return 0;
  }
  if (args.positional.length !== 1) {
    console.error(`lorakit inspect: expected one path\n${USAGE}`);
    return 2;
  }
  const p = args.positional[0];
  if (!fs.existsSync(p)) {
    console.error(`lorakit inspect: no such file or directory: ${p}`);
    return 1;
  }
  try {
    if (isGguf(p)) return inspectGguf(p, args.flags.has('all'), args.flags.has('json'));
    const isAdapter = fs.statSync(p).isDirectory() && fs.existsSync(path.join(p, CONFIG_FILE));
    if (isAdapter) return inspectAdapter(p, args.flags.has('all'), args.flags.has('json'));
    return inspectCheckpoint(p, args.flags.has('all'), args.flags.has('json'));
  } catch (e) {
    console.error(`lorakit inspect: ${(e as Error).message}`);
    return 1;
  }
}

function inspectAdapter(dir: string, all: boolean, json: boolean): number {
  const config = JSON.parse(fs.readFileSync(path.join(dir, CONFIG_FILE), 'utf8')) as Record<string, unknown>;
  const wPath = path.join(dir, WEIGHTS_FILE);
  const list = fs.existsSync(wPath) ? (() => {
    const ck = Checkpoint.open(wPath);
    try {
      return rows(ck);
    } finally {
      ck.close();
    }
  })() : [];
  const modules = new Set(list.map((r) => r.name.replace(/^base_model\.model\./, '').replace(/\.(lora_[AB]\.weight|lora_embedding_[AB]|lora_magnitude_vector)$/, '')));
  const ranks = [...new Set(list.filter((r) => /lora_A\.weight$|lora_embedding_A$/.test(r.name)).map((r) => r.shape[0]))].sort((a, b) => a - b);
  const params = list.reduce((s, r) => s + r.params, 0);
  const subAdapters = fs.readdirSync(dir).filter((f) => fs.existsSync(path.join(dir, f, CONFIG_FILE)));
  if (json) {
    console.log(JSON.stringify({ kind: 'adapter', config, modules: modules.size, ranks, params, tensors: list, subAdapters }));
    return 0;
  }
  const shownKeys = Object.entries(config).filter(([, v]) => v !== null && !(typeof v === 'object' && Object.keys(v as object).length === 0));
  console.log(`adapter ${dir}`);
  console.log('config:');
  for (const [k, v] of shownKeys) console.log(`  ${k}: ${JSON.stringify(v)}`);
  console.log(`modules: ${modules.size}, ranks: ${ranks.join(', ') || 'none'}, tensors: ${list.length}, parameters: ${fmt(params)}`);
  if (!fs.existsSync(wPath)) console.log(`(no ${WEIGHTS_FILE} in this directory)`);
  printRows(list, all);
  if (subAdapters.length) console.log(`other adapters in sub-directories: ${subAdapters.join(', ')}`);
  return 0;
}

function inspectCheckpoint(p: string, all: boolean, json: boolean): number {
  const ck = Checkpoint.open(p);
  try {
    const list = rows(ck);
    const byDtype = new Map<string, number>();
    for (const r of list) byDtype.set(r.dtype, (byDtype.get(r.dtype) ?? 0) + r.params);
    const params = list.reduce((s, r) => s + r.params, 0);
    if (json) {
      console.log(JSON.stringify({ kind: 'checkpoint', shards: ck.shardFiles, metadata: ck.metadata, params, byDtype: Object.fromEntries(byDtype), tensors: list }));
      return 0;
    }
    console.log(`checkpoint ${p}${ck.sharded ? ` (${ck.shardFiles.length} shards)` : ''}`);
    const meta = Object.entries(ck.metadata);
    if (meta.length) {
      console.log('metadata:');
      for (const [k, v] of meta) console.log(`  ${k}: ${v.length > 200 ? `${v.slice(0, 200)}…` : v}`);
    }
    console.log(`tensors: ${list.length}, parameters: ${fmt(params)} (${[...byDtype].map(([d, n]) => `${d} ${fmt(n)}`).join(', ')})`);
    const aliases = ck.aliases;
    if (aliases.size) console.log(`tied: ${[...aliases].map(([a, b]) => `${a} → ${b}`).join(', ')}`);
    printRows(list, all);
    return 0;
  } finally {
    ck.close();
  }
}
