export { repoRoot } from '../helpers/paths.js';
