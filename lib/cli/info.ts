/** `lorakit info`: the build's backends and the CPU path chosen at load time. */
import { backendInfo, gemmWInPlaceLabel } from '../kernels';

export const summary = 'show the compiled and usable backends and the CPU kernel path';

const USAGE = `usage: lorakit info [--json]
Shows the backends compiled into the addon, those usable on this machine, and the CPU kernel path
chosen at load time (LORAKIT_CPU_PATH forces one) with its thread count.
  --json   one JSON object: backendInfo() as the API returns it (default: text)

examples:
  lorakit info
  LORAKIT_CPU_PATH=portable lorakit info --json`;

export async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(USAGE);
    return 0;
  }
  const unknown = argv.find((a) => a !== '--json');
  if (unknown !== undefined) {
    console.error(`lorakit info: unknown argument '${unknown}'\n${USAGE}`);
    return 2;
  }
  const info = backendInfo();
  if (argv.includes('--json')) console.log(JSON.stringify(info));
  else {
    console.log(`compiled backends: ${info.compiled.join(', ')}`);
    console.log(`usable backends:   ${info.usable.join(', ')}`);
    if (info.cudaUnavailable) console.log(`cuda:              not usable: ${info.cudaUnavailable}`);
    console.log(`cpu kernel path:   ${info.cpuPath} (${info.threads} threads)`);
    const g = info.gemmBlocks;
    console.log(`cpu gemm blocks:   mc ${g.mc}, kc ${g.kc}, nc ${g.nc} (${g.source})${gemmWInPlaceLabel(g)}`);
    console.log(`native addon:      ${info.loadedFrom}, ${info.addonPath}`);
  }
  return 0;
}
