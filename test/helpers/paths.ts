// Locates the repository from a compiled test file (dist/test/...), whatever the working directory.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The directory of moe-serve's package.json, found from this file so tests run from src or dist alike. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'moe-serve') return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the moe-serve repository root above the test files');
    dir = parent;
  }
}

export const REPO_ROOT = repoRoot();
export const FIXTURES_DIR = join(REPO_ROOT, 'test', 'fixtures');
export const TINY_MOE_DIR = join(REPO_ROOT, 'models', 'tiny-moe');
export const CLI_PATH = join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}
