/**
 * Atomic file writes: data goes to a temporary file in the same directory, is fsync'ed, then
 * renamed over the target, so a crash leaves either the old file or the new one, never a torn one.
 */
import * as fs from 'fs';
import * as path from 'path';

function tempPath(target: string): string {
  removeStaleTemps(target);
  const rand = Math.floor(Math.random() * 0xffffffff).toString(16);
  return path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${rand}.tmp`);
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

/**
 * Removes temp files of `target` left by writers that died mid-save (their pid is gone), so
 * crashed saves do not pile up. Temps of live processes, including this one, are left alone.
 */
export function removeStaleTemps(target: string): string[] {
  const dir = path.dirname(target);
  const prefix = `.${path.basename(target)}.`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const m = /^(\d+)\.[0-9a-f]+\.tmp$/.exec(name.slice(prefix.length));
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    fs.rmSync(path.join(dir, name), { force: true });
    removed.push(name);
  }
  return removed;
}

/** Writes `data` to `target` atomically. */
export function writeFileAtomicSync(target: string, data: string | Uint8Array): void {
  const tmp = tempPath(target);
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, target);
}

/**
 * Opens a temporary file beside `target` for streaming writes; commit() fsyncs and renames it into
 * place, abort() removes it.
 */
export class AtomicWriter {
  readonly tempPath: string;
  #fd: number | null;
  #pos = 0;

  constructor(readonly target: string) {
    this.tempPath = tempPath(target);
    this.#fd = fs.openSync(this.tempPath, 'w');
  }

  get position(): number {
    return this.#pos;
  }

  write(chunk: Uint8Array): void {
    if (this.#fd === null) throw new Error('AtomicWriter: already committed or aborted');
    let off = 0;
    while (off < chunk.length) off += fs.writeSync(this.#fd, chunk, off, chunk.length - off, this.#pos + off);
    this.#pos += chunk.length;
  }

  commit(): void {
    if (this.#fd === null) throw new Error('AtomicWriter: already committed or aborted');
    fs.fsyncSync(this.#fd);
    fs.closeSync(this.#fd);
    this.#fd = null;
    fs.renameSync(this.tempPath, this.target);
  }

  abort(): void {
    if (this.#fd === null) return;
    fs.closeSync(this.#fd);
    this.#fd = null;
    fs.rmSync(this.tempPath, { force: true });
  }
}

/**
 * writeFileAtomicSync off the JS thread: fs.promises hands the writes, the fsync and the rename to
 * libuv's pool. Chunks are pulled one at a time, so a generator can produce a large file lazily;
 * if it throws, the temp file is removed and the target is untouched.
 */
export async function writeFileAtomic(target: string, chunks: string | Uint8Array | Iterable<Uint8Array>): Promise<void> {
  const tmp = tempPath(target);
  const fh = await fs.promises.open(tmp, 'w');
  try {
    const list = typeof chunks === 'string' ? [Buffer.from(chunks, 'utf8')] : chunks instanceof Uint8Array ? [chunks] : chunks;
    let pos = 0;
    for (const c of list) {
      let off = 0;
      while (off < c.length) off += (await fh.write(c, off, c.length - off, pos + off)).bytesWritten;
      pos += c.length;
    }
    await fh.sync();
  } catch (e) {
    await fh.close();
    await fs.promises.rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  await fs.promises.rename(tmp, target);
}
