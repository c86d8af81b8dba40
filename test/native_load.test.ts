/** When the addon is missing, the first native call says exactly how to build it. */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

test('a missing addon gives NativeLoadError with build instructions', () => {
  const root = path.resolve(__dirname, '..');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-noaddon-'));
  try {
    // A copy of the compiled package without build/ or prebuilds/: what a skipped install script
    // leaves on a platform with no prebuilt binary.
    fs.cpSync(path.join(root, 'dist'), path.join(tmp, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(root, 'package.json'), path.join(tmp, 'package.json'));
    fs.mkdirSync(path.join(tmp, 'scripts'));
    fs.copyFileSync(path.join(root, 'scripts', 'addon-locate.js'), path.join(tmp, 'scripts', 'addon-locate.js'));
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(tmp, 'node_modules'));
    const script =
      "const l = require('./dist');" +
      "try { l.Tensor.zeros([1]); console.log('loaded'); }" +
      "catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); }";
    // LORAKIT_NATIVE_PATH (npm run test:asan) would load an addon from elsewhere: this case has none.
    const env = { ...process.env, LORAKIT_NATIVE_PATH: '' };
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: tmp, encoding: 'utf8', env }));
    expect(out.name).toBe('NativeLoadError');
    expect(out.code).toBe('LORAKIT_NATIVE_LOAD');
    expect(out.message).toContain('npm rebuild lorakit');
    expect(out.message).toContain('npm install-scripts approve lorakit');
    expect(out.message).toMatch(/C\+\+17 compiler/);
    expect(out.message).toContain('local-build build/Release/lorakit.node: not built');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
