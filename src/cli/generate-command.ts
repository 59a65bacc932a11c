// `moe-serve generate`: one prompt, the continuation streamed to stdout, then its speed.
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { generate, type GenerateResult } from '../engine/generate.js';
import { MoeModel } from '../engine/moe-model.js';
import { UsageError } from './cli-error.js';
import { loadProgressBar } from './load-progress.js';
import { tokenBreakdown } from './token-breakdown.js';
import { intFlag, loadOptions, MODEL_OPTIONS, MODEL_OPTIONS_HELP, modelOptions, numberFlag, parseFlag } from './model-options.js';

export const GENERATE_HELP = `Usage: moe-serve generate (--prompt TEXT | --prompt-file PATH) [options]

Generates a continuation of the prompt and streams it to stdout, then prints prompt and decode tokens/s.

  --prompt TEXT        the prompt, taken as given: a shell passes "\\n" in double quotes as a backslash
                       and an n, so write $'line 1\\nline 2' or a real line break, or use --prompt-file;
                       --prompt - reads the prompt from stdin
  --prompt-file PATH   read the prompt from a UTF-8 file (- for stdin); one final line break, which
                       editors, echo and heredocs add, is dropped (end with a blank line to keep one)
  --max-tokens N       most tokens to generate (default 64)
  --temperature T      0 = greedy (default: the model's generation_config.json, greedy if it does not sample)
  --top-p P            nucleus sampling, 0 < P <= 1 (default: generation_config.json, else 1)
  --top-k K            keep the K most likely tokens, 0 = off (default: generation_config.json, else 0)
  --seed N             makes sampling repeatable
  --stop TEXT          stop before TEXT; repeatable
  --json               print one JSON object {prompt_ids, completion_ids, text, finish_reason} instead
  --trace FILE         write the routing trace (JSON Lines: experts per token and layer, lookahead)
  --stats              print as JSON to stderr at the end: the expert cache statistics, the compute forms,
                       and per generated token the session runs and where the time went (per kind of
                       session run, sampling, JavaScript between runs)
${MODEL_OPTIONS_HELP}
`;

export async function generateCommand(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      ...MODEL_OPTIONS,
      prompt: { type: 'string' },
      'prompt-file': { type: 'string' },
      'max-tokens': { type: 'string', default: '64' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      'top-k': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true, default: [] },
      json: { type: 'boolean', default: false },
      trace: { type: 'string' },
      stats: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(GENERATE_HELP);
    return;
  }
  const maxTokens = parseFlag('max-tokens', intFlag(0), values['max-tokens']);
  const seed = values.seed === undefined ? undefined : parseFlag('seed', intFlag(0).max(2 ** 32 - 1), values.seed);
  const opts = modelOptions(values);
  const optional = <T>(flag: string, schema: z.ZodType<T>, v: string | undefined): T | undefined => (v === undefined ? undefined : parseFlag(flag, schema, v));
  const temperature = optional('temperature', numberFlag(0, 100), values.temperature);
  const topP = optional('top-p', numberFlag(0, 1).refine((p) => p > 0, 'must be greater than 0'), values['top-p']);
  const topK = optional('top-k', intFlag(0), values['top-k']);
  // Read last among the flags, so that a wrong flag is reported before stdin is waited on, and before the
  // model loads, so that a missing file is reported at once.
  const prompt = await readPrompt(values.prompt, values['prompt-file']);

  // A trace records two layers of lookahead even when nothing is prefetched, for the replay tool.
  const experts = values.trace === undefined ? opts.experts : { ...opts.experts, lookaheadDepth: 2 };
  const progress = loadProgressBar();
  let loaded: MoeModel;
  try {
    loaded = await MoeModel.load(opts.modelDir, { ...loadOptions(opts), experts, onProgress: (stage, done, total) => progress.update(stage, done, total) });
  } finally {
    progress.stop();
  }
  await using model = loaded;
  await using trace = values.trace === undefined ? null : await model.openTrace(values.trace);
  const sampling = {
    temperature: temperature ?? model.samplingDefaults.temperature,
    topP: topP ?? model.samplingDefaults.topP,
    topK: topK ?? model.samplingDefaults.topK,
  };
  const promptIds = model.tokenizer.encode(prompt);
  const before = model.runtime.tallySnapshot();
  const waitedBefore = model.experts.stats().total.waitMs;
  const stream = generate(model, { promptIds, maxTokens, sampling, seed, stop: values.stop, observer: trace?.request(promptIds) });
  let step = await stream.next();
  while (!step.done) {
    if (!values.json) process.stdout.write(step.value.text);
    step = await stream.next();
  }
  const result = step.value;
  process.stdout.write(values.json ? `${JSON.stringify(toJson(result))}\n` : `\n${speedLine(result)}\n`);
  if (values.stats) {
    const t = result.timings;
    const generated = Math.max(1, result.completionIds.length);
    const loadWaitMs = model.experts.stats().total.waitMs - waitedBefore;
    const perToken = tokenBreakdown(before, model.runtime.tallySnapshot(), t.promptMs + t.decodeMs, t.samplingMs, loadWaitMs, generated);
    process.stderr.write(`${JSON.stringify({ ...model.experts.stats(), compute_forms: model.computeForms, per_token: perToken }, null, 2)}\n`);
  }
}

/** `-` for a file name means stdin, as for cat and most Unix tools. */
const STDIN = '-';

/**
 * The prompt from --prompt TEXT, or from the file or stdin that --prompt-file PATH or --prompt - names.
 * Text from a file or stdin is decoded strictly as UTF-8 (a stray Latin-1 byte would otherwise become
 * U+FFFD silently), loses a leading byte-order mark, and loses one final line break: `echo`, heredocs and
 * editors end text with one, and a prompt that ends in a newline continues differently.
 */
async function readPrompt(text: string | undefined, file: string | undefined): Promise<string> {
  if (text !== undefined && file !== undefined) throw new UsageError('give --prompt or --prompt-file, not both');
  if (text === undefined && file === undefined) throw new UsageError('--prompt or --prompt-file is required (--prompt - reads the prompt from stdin)');
  if (text !== undefined && text !== STDIN) return parseFlag('prompt', z.string().min(1, 'the prompt is empty'), text);
  const flag = text !== undefined ? '--prompt -' : '--prompt-file';
  const path = file ?? STDIN;
  const where = path === STDIN ? 'stdin' : JSON.stringify(path);
  const bytes = path === STDIN ? await readStdin() : await readPromptFile(path);
  let prompt: string;
  try {
    prompt = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new UsageError(`${flag}: ${where} is not UTF-8 text`);
  }
  prompt = prompt.replace(/\r?\n$/, '');
  if (prompt.length === 0) throw new UsageError(`${flag}: the prompt from ${where} is empty`);
  return prompt;
}

async function readPromptFile(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UsageError(`--prompt-file: no such file ${JSON.stringify(path)}`);
    throw new UsageError(`--prompt-file: cannot read ${JSON.stringify(path)} (${code ?? (err as Error).message})`);
  }
}

async function readStdin(): Promise<Uint8Array> {
  // Someone at a terminal would otherwise see the command hang, not knowing it waits for them.
  if (process.stdin.isTTY) process.stderr.write('reading the prompt from stdin; end it with Ctrl-D\n');
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function toJson(r: GenerateResult) {
  return { prompt_ids: r.promptIds, completion_ids: r.completionIds, text: r.text, finish_reason: r.finishReason };
}

function speedLine(r: GenerateResult): string {
  const t = r.timings;
  const rate = (n: number, ms: number) => (ms > 0 ? ((n * 1000) / ms).toFixed(1) : 'n/a');
  return (
    `[prompt: ${t.promptTokens} tokens, ${rate(t.promptTokens, t.promptMs)} tokens/s | ` +
    `decode: ${t.decodeSteps} tokens, ${rate(t.decodeSteps, t.decodeMs)} tokens/s | finish: ${r.finishReason}]`
  );
}
