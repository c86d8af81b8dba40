/** The training progress bar's line fitting: a terminal that reports 0 columns loses nothing. */
import { ProgressBar } from '../lib';

function drawn(columns: number | undefined, info: string): string {
  const out: string[] = [];
  const bar = new ProgressBar(4, { isTTY: true, columns, write: (s: string) => out.push(s) }, true);
  bar.finish(info);
  return out[0].replace(/^\r/, '').trimEnd();
}

test('0 or unknown columns draw the whole line; a known width cuts it to width - 1', () => {
  for (const cols of [0, undefined]) {
    const line = drawn(cols, 'loss 0.1234');
    expect(line.endsWith('loss 0.1234')).toBe(true);
  }
  const narrow = drawn(30, 'loss 0.1234');
  expect(narrow.length).toBe(29);
});
