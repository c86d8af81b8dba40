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
    .filter((f) => f.endsWith('.js'))
    .map((f) => f.slice(0, -3))
    .filter((n) => !n.startsWith('_'))
    .sort();
}

function load(name: string): Command {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(path.join(__dirname, 'cli', name)) as Command;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  const names = commandNames();
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log('usage: lorakit <command> [options]\n\ncommands:');
    for (const n of names) console.log(`  ${n.padEnd(10)} ${load(n).summary}`);
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
