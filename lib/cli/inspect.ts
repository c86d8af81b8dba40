/** `lorakit inspect`: an adapter directory's config and factors, a checkpoint's tensors, or what a folder holds. */
import * as fs from 'fs';
import * as path from 'path';
import { Checkpoint, safetensorsFilesIn } from '../io/checkpoint';
import { CONFIG_FILE, WEIGHTS_FILE } from '../model/adapter_io';
import { parseArgs } from './_args';
import { inspectGguf, isGguf } from './_gguf';

export const summary = 'show an adapter (config, shapes, parameter counts), a .safetensors checkpoint, a GGUF file, or what a folder holds';

const USAGE = `usage: lorakit inspect <path> [--all] [--json]
  path     an adapter folder (adapter_config.json + adapter_model.safetensors), a .safetensors file,
           a .gguf file (metadata and tensors), a model folder (model.safetensors, a sharded
           model.safetensors.index.json, or a single .safetensors file), or any other folder: its
           .safetensors files and adapter sub-folders are listed and each is shown
  --all    list every tensor (default: the first 40 of each file)
  --json   one JSON object instead of text (default: text)

examples:
  lorakit inspect ./my-adapter                 # config, target modules, ranks, factor shapes, parameters
  lorakit inspect model.safetensors --all      # metadata, tied weights, every tensor's dtype and shape
  lorakit inspect base.gguf                    # GGUF metadata (hyperparameters, tokenizer) and tensors
  lorakit inspect ./downloaded-model --json    # a folder: its model, other weight files and adapters`;

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
    const isDir = fs.statSync(p).isDirectory();
    const isAdapter = isDir && fs.existsSync(path.join(p, CONFIG_FILE));
    if (isAdapter) return inspectAdapter(p, args.flags.has('all'), args.flags.has('json'));
    if (isDir) return inspectFolder(p, args.flags.has('all'), args.flags.has('json'));
    return inspectCheckpoint(p, args.flags.has('all'), args.flags.has('json'));
  } catch (e) {
    console.error(`lorakit inspect: ${(e as Error).message}`);
    return 1;
  }
}

interface AdapterReport {
  kind: 'adapter';
  config: Record<string, unknown>;
  modules: number;
  ranks: number[];
  params: number;
  tensors: TensorRow[];
  subAdapters: string[];
}

interface CheckpointReport {
  kind: 'checkpoint';
  shards: string[];
  metadata: Record<string, string>;
  params: number;
  byDtype: Record<string, number>;
  tensors: TensorRow[];
  tied: Array<[string, string]>;
}

function adapterReport(dir: string): AdapterReport {
  const config = JSON.parse(fs.readFileSync(path.join(dir, CONFIG_FILE), 'utf8')) as Record<string, unknown>;
  const wPath = path.join(dir, WEIGHTS_FILE);
  let list: TensorRow[] = [];
  if (fs.existsSync(wPath)) {
    const ck = Checkpoint.open(wPath);
    try {
      list = rows(ck);
    } finally {
      ck.close();
    }
  }
  const modules = new Set(list.map((r) => r.name.replace(/^base_model\.model\./, '').replace(/\.(lora_[AB]\.weight|lora_embedding_[AB]|lora_magnitude_vector)$/, '')));
  const ranks = [...new Set(list.filter((r) => /lora_A\.weight$|lora_embedding_A$/.test(r.name)).map((r) => r.shape[0]))].sort((a, b) => a - b);
  const params = list.reduce((s, r) => s + r.params, 0);
  const subAdapters = fs.readdirSync(dir).filter((f) => fs.existsSync(path.join(dir, f, CONFIG_FILE)));
  return { kind: 'adapter', config, modules: modules.size, ranks, params, tensors: list, subAdapters };
}

function printAdapter(dir: string, r: AdapterReport, all: boolean): void {
  const shownKeys = Object.entries(r.config).filter(([, v]) => v !== null && !(typeof v === 'object' && Object.keys(v as object).length === 0));
  console.log(`adapter ${dir}`);
  console.log('config:');
  for (const [k, v] of shownKeys) console.log(`  ${k}: ${JSON.stringify(v)}`);
  console.log(`modules: ${r.modules}, ranks: ${r.ranks.join(', ') || 'none'}, tensors: ${r.tensors.length}, parameters: ${fmt(r.params)}`);
  if (!fs.existsSync(path.join(dir, WEIGHTS_FILE))) console.log(`(no ${WEIGHTS_FILE} in this directory)`);
  printRows(r.tensors, all);
  if (r.subAdapters.length) console.log(`other adapters in sub-directories: ${r.subAdapters.join(', ')}`);
}

function checkpointReport(p: string): CheckpointReport {
  const ck = Checkpoint.open(p);
  try {
    const list = rows(ck);
    const byDtype: Record<string, number> = {};
    for (const r of list) byDtype[r.dtype] = (byDtype[r.dtype] ?? 0) + r.params;
    const params = list.reduce((s, r) => s + r.params, 0);
    return { kind: 'checkpoint', shards: ck.shardFiles, metadata: ck.metadata, params, byDtype, tensors: list, tied: [...ck.aliases] };
  } finally {
    ck.close();
  }
}

function printCheckpoint(p: string, r: CheckpointReport, all: boolean): void {
  console.log(`checkpoint ${p}${r.shards.length > 1 ? ` (${r.shards.length} shards)` : fs.statSync(p).isDirectory() ? ` (${r.shards[0]})` : ''}`);
  const meta = Object.entries(r.metadata);
  if (meta.length) {
    console.log('metadata:');
    for (const [k, v] of meta) console.log(`  ${k}: ${v.length > 200 ? `${v.slice(0, 200)}…` : v}`);
  }
  console.log(`tensors: ${r.tensors.length}, parameters: ${fmt(r.params)} (${Object.entries(r.byDtype).map(([d, n]) => `${d} ${fmt(n)}`).join(', ')})`);
  if (r.tied.length) console.log(`tied: ${r.tied.map(([a, b]) => `${a} → ${b}`).join(', ')}`);
  printRows(r.tensors, all);
}

function inspectAdapter(dir: string, all: boolean, json: boolean): number {
  const r = adapterReport(dir);
  if (json) console.log(JSON.stringify(r));
  else printAdapter(dir, r, all);
  return 0;
}

function inspectCheckpoint(p: string, all: boolean, json: boolean): number {
  const r = checkpointReport(p);
  if (json) console.log(JSON.stringify(r));
  else printCheckpoint(p, r, all);
  return 0;
}

/**
 * A folder that is not an adapter: its model (a model folder's weights), the other .safetensors
 * files and the adapter sub-folders, each shown as inspecting it alone would show it.
 */
function inspectFolder(dir: string, all: boolean, json: boolean): number {
  const modelFile = Checkpoint.modelFileIn(dir);
  const items: Array<{ kind: 'model' | 'file' | 'adapter'; path: string }> = [];
  const modelFiles = new Set<string>();
  if (modelFile !== null) {
    const ck = Checkpoint.open(dir);
    for (const f of [...ck.shardFiles, modelFile]) modelFiles.add(f);
    ck.close();
    items.push({ kind: 'model', path: dir });
  }
  for (const f of safetensorsFilesIn(dir)) if (!modelFiles.has(f)) items.push({ kind: 'file', path: path.join(dir, f) });
  const entries = fs.readdirSync(dir).sort();
  for (const f of entries) if (fs.existsSync(path.join(dir, f, CONFIG_FILE))) items.push({ kind: 'adapter', path: path.join(dir, f) });
  const shown = new Set([...modelFiles, ...items.map((i) => path.basename(i.path))]);
  const others = entries.filter((f) => !shown.has(f) && !f.startsWith('.'));
  if (items.length === 0) {
    console.error(`lorakit inspect: ${dir} holds no .safetensors file and no adapter folder${others.length ? ` (it has: ${others.join(', ')})` : ' (it is empty)'}`);
    return 1;
  }
  if (items.length === 1 && items[0].kind === 'model') return inspectCheckpoint(dir, all, json);
  const reports = items.map((i) => ({ ...i, report: i.kind === 'adapter' ? adapterReport(i.path) : checkpointReport(i.path) }));
  if (json) {
    console.log(JSON.stringify({ kind: 'folder', path: dir, items: reports, otherFiles: others }));
    return 0;
  }
  const describe = (i: (typeof items)[number]) => (i.kind === 'model' ? `model (${[...modelFiles].join(', ')})` : i.kind === 'adapter' ? `adapter ${path.basename(i.path)}/` : path.basename(i.path));
  console.log(`folder ${dir} holds: ${items.map(describe).join(', ')}${others.length ? `; other files: ${others.join(', ')}` : ''}`);
  for (const i of reports) {
    console.log('');
    if (i.report.kind === 'adapter') printAdapter(i.path, i.report, all);
    else printCheckpoint(i.path, i.report, all);
  }
  return 0;
}
