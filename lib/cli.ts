#!/usr/bin/env node
/**
 * `npx lorakit <command>`: dispatches to lib/cli/<command>.ts, each of which exports
 * `run(argv: string[]): Promise<number>` (the exit code) and `summary` (one line for help).
 */
import * as fs from 'fs';
import * as path from 'path';

interface Command {
  run(argv: string[]): Promise<number>;
  summary: string;
}

function commandNames(): string[] {
  const dir = path.join(__dirname, 'cli');
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.js') || (f.endsWith('.ts') && !f.endsWith('.d.ts'))) // .ts: run from the sources
    .map((f) => f.slice(0, -3))
    .filter((n, i, all) => !n.startsWith('_') && all.indexOf(n) === i)
    .sort();
}

function load(name: string): Command {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(path.join(__dirname, 'cli', name)) as Command;
}

/** The version in package.json (one directory above lib/ and dist/). */
export function version(): string {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require(path.join(__dirname, '..', 'package.json')) as { version: string }).version;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  const names = commandNames();
  if (name === '--version' || name === '-v' || name === '-V' || name === 'version') {
    console.log(version());
    return 0;
  }
  if (name === 'help' && rest.length > 0 && names.includes(rest[0])) return load(rest[0]).run(['--help']);
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(`lorakit ${version()}: LoRA adapters, merges and training for Node.js\n\nusage: lorakit <command> [options]\n\ncommands:`);
    for (const n of names) console.log(`  ${n.padEnd(10)} ${load(n).summary}`);
    console.log('\n`lorakit <command> --help` (or `lorakit help <command>`) gives its options, defaults and examples;');
    console.log('`lorakit --version` the version. Example: lorakit demo');
    return name ? 0 : 1;
  }
  if (!names.includes(name)) {
    console.error(`lorakit: unknown command '${name}' (known: ${names.join(', ')})`);
    return 2;
  }
  return load(name).run(rest);
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      console.error(`lorakit: ${err.message}`);
      process.exit(1);
    },
  );
}
