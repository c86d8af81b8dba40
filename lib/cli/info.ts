/** `lorakit info`: the build's backends and the CPU path chosen at load time. */
import { backendInfo } from '../kernels';

export const summary = 'show the compiled and usable backends and the CPU kernel path';

export async function run(argv: string[]): Promise<number> {
  const info = backendInfo();
  if (argv.includes('--json')) console.log(JSON.stringify(info));
  else {
    console.log(`compiled backends: ${info.compiled.join(', ')}`);
    console.log(`usable backends:   ${info.usable.join(', ')}`);
    console.log(`cpu kernel path:   ${info.cpuPath} (${info.threads} threads)`);
    console.log(`native addon:      ${info.loadedFrom}, ${info.addonPath}`);
  }
  return 0;
}
