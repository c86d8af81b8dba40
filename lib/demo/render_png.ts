/**
 * SVG → PNG with whatever renderer the machine has (rsvg-convert, ImageMagick, inkscape). The
 * result is checked for the PNG signature, because a command of the right name may be a stand-in.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

export type RenderResult = { ok: true; tool: string } | { ok: false; reason: string };

export function renderPng(svgPath: string, pngPath: string): RenderResult {
  const tmp = path.join(path.dirname(pngPath), `.${path.basename(pngPath)}.${process.pid}.tmp.png`);
  const candidates: Array<[string, string[]]> = [
    ['rsvg-convert', ['-o', tmp, svgPath]],
    ['magick', [svgPath, tmp]],
    ['convert', [svgPath, tmp]],
    ['inkscape', [svgPath, '--export-type=png', `--export-filename=${tmp}`]],
  ];
  const tried: string[] = [];
  for (const [tool, args] of candidates) {
    const r = spawnSync(tool, args, { stdio: 'pipe', timeout: 30000 });
    if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') continue;
    let ok = false;
    try {
      ok = r.status === 0 && fs.readFileSync(tmp).subarray(0, 8).equals(PNG_SIGNATURE);
    } catch {
      ok = false;
    }
    if (ok) {
      fs.renameSync(tmp, pngPath);
      return { ok: true, tool };
    }
    fs.rmSync(tmp, { force: true });
    const msg = (r.stderr?.toString() || r.stdout?.toString() || '').trim().split('\n')[0];
    tried.push(`${tool} (failed${msg ? ': ' + msg.slice(0, 100) : ''})`);
  }
  return {
    ok: false,
    reason: tried.length
      ? `no working SVG renderer: ${tried.join('; ')}`
      : 'no SVG renderer found (looked for rsvg-convert, magick, convert, inkscape)',
  };
}
