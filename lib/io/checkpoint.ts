/**
 * A checkpoint on disk: one .safetensors file, or a directory of shards listed by
 * model.safetensors.index.json ({ metadata, weight_map: name → shard file }), as transformers
 * writes them. Tensors are read one at a time through SafetensorsReader.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LoraRangeError, LoraTypeError } from '../errors';
import { Tensor } from '../tensor';
import { SafetensorsEntry } from './safetensors';
import { SafetensorsReader } from './safetensors_reader';

export const INDEX_FILE = 'model.safetensors.index.json';
const ADAPTER_CONFIG = 'adapter_config.json'; // a peft adapter folder is not a model folder

/** The .safetensors files directly in `dir`, sorted. */
export function safetensorsFilesIn(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors') && !f.startsWith('.') && fs.statSync(path.join(dir, f)).isFile()).sort();
}

export interface ShardIndex {
  metadata: Record<string, unknown>;
  weight_map: Record<string, string>;
}

export class Checkpoint {
  /** Shard file names (relative to `dir`) in first-appearance order; one entry for a single file. */
  readonly shardFiles: string[];
  /** The index file's parsed JSON, or null for a single file. */
  readonly index: ShardIndex | null;
  readonly #readers = new Map<string, SafetensorsReader>();
  readonly #where = new Map<string, string>();

  private constructor(readonly dir: string, shardFiles: string[], index: ShardIndex | null) {
    const indexOk = index === null || (typeof index === 'object' && index !== null && typeof index.weight_map === 'object' && index.weight_map !== null);
    if (typeof dir !== 'string' || !Array.isArray(shardFiles) || shardFiles.some((f) => typeof f !== 'string') || !indexOk)
      throw new LoraTypeError('Checkpoint: open checkpoints with Checkpoint.open(path)');
    this.shardFiles = shardFiles;
    this.index = index;
    try {
      for (const f of shardFiles) {
        const r = new SafetensorsReader(path.join(dir, f));
        this.#readers.set(f, r);
        for (const n of r.names) {
          if (this.#where.has(n)) throw new LoraRangeError(`${dir}: tensor '${n}' is in both ${this.#where.get(n)} and ${f}`);
          this.#where.set(n, f);
        }
      }
      if (index) {
        for (const [n, f] of Object.entries(index.weight_map)) {
          if (this.#where.get(n) !== f) throw new LoraRangeError(`${path.join(dir, INDEX_FILE)}: weight_map says '${n}' is in ${f}, but it is not there`);
        }
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /**
   * The file that makes `dir` a model folder: model.safetensors.index.json (shards),
   * model.safetensors, or the folder's only .safetensors file; null when it has none of these
   * (no weights, several candidates, or an adapter folder).
   */
  static modelFileIn(dir: string): string | null {
    if (fs.existsSync(path.join(dir, INDEX_FILE))) return INDEX_FILE;
    if (fs.existsSync(path.join(dir, 'model.safetensors'))) return 'model.safetensors';
    if (fs.existsSync(path.join(dir, ADAPTER_CONFIG))) return null;
    const files = safetensorsFilesIn(dir);
    return files.length === 1 ? files[0] : null;
  }

  /**
   * Opens a .safetensors file, or a model folder: one holding model.safetensors.index.json and its
   * shards, model.safetensors, or a single .safetensors file.
   */
  static open(p: string, argName = 'path'): Checkpoint {
    if (typeof p !== 'string' || p.length === 0) throw new LoraTypeError(`${argName}: expected a path`);
    if (!fs.existsSync(p)) throw new LoraRangeError(`${argName}: no such file or directory: ${p}`);
    if (!fs.statSync(p).isDirectory()) return new Checkpoint(path.dirname(p), [path.basename(p)], null);
    const found = Checkpoint.modelFileIn(p);
    const indexPath = path.join(p, INDEX_FILE);
    if (found === INDEX_FILE) {
      let index: ShardIndex;
      try {
        index = JSON.parse(fs.readFileSync(indexPath, 'utf8')) as ShardIndex;
      } catch (e) {
        throw new LoraTypeError(`${indexPath}: not valid JSON (${(e as Error).message})`);
      }
      if (!index || typeof index.weight_map !== 'object' || index.weight_map === null)
        throw new LoraTypeError(`${indexPath}: missing the weight_map object`);
      const files: string[] = [];
      for (const [n, f] of Object.entries(index.weight_map)) {
        if (typeof f !== 'string' || f.includes('/') || f.includes('\\') || f.startsWith('.'))
          throw new LoraTypeError(`${indexPath}: weight_map['${n}'] must be a shard file name in the same directory`);
        if (!files.includes(f)) files.push(f);
      }
      return new Checkpoint(p, files, { metadata: (index.metadata ?? {}) as Record<string, unknown>, weight_map: index.weight_map });
    }
    if (found !== null) return new Checkpoint(p, [found], null);
    if (fs.existsSync(path.join(p, ADAPTER_CONFIG))) throw new LoraRangeError(`${argName}: ${p} is a LoRA adapter folder (${ADAPTER_CONFIG}), not a model`);
    const files = safetensorsFilesIn(p);
    const seen = files.length ? ` (it has ${files.join(', ')}: give the file's path)` : ' (it has no .safetensors file)';
    throw new LoraRangeError(`${argName}: ${p} holds neither ${INDEX_FILE} nor model.safetensors${seen}`);
  }

  get sharded(): boolean {
    return this.index !== null;
  }

  /** Every tensor name, shard by shard in file order. */
  get names(): string[] {
    return this.shardFiles.flatMap((f) => this.#readers.get(f)!.names);
  }

  reader(shardFile: string): SafetensorsReader {
    const r = this.#readers.get(shardFile);
    if (!r) throw new LoraRangeError(`shardFile: '${shardFile}' is not a shard of ${this.dir}`);
    return r;
  }

  /** The reader holding `name`. */
  readerOf(name: string): SafetensorsReader {
    const f = this.#where.get(name);
    if (!f) throw new LoraRangeError(`name: no tensor '${name}' in ${this.dir}`);
    return this.#readers.get(f)!;
  }

  has(name: string): boolean {
    return this.#where.has(name);
  }

  entry(name: string): SafetensorsEntry {
    return this.readerOf(name).entry(name);
  }

  tensor(name: string): Tensor {
    return this.readerOf(name).tensor(name);
  }

  /** Metadata of the (first) file: for torch checkpoints this holds tied-weight aliases. */
  get metadata(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const f of this.shardFiles) Object.assign(out, this.#readers.get(f)!.metadata);
    return out;
  }

  /**
   * Tied weights recorded in the metadata by torch's save_model: { removed name: kept name }
   * where the kept name is a tensor of this checkpoint and the removed one is not.
   */
  get aliases(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [k, v] of Object.entries(this.metadata)) if (!this.has(k) && this.has(v)) out.set(k, v);
    return out;
  }

  close(): void {
    for (const r of this.#readers.values()) r.close();
  }
}
