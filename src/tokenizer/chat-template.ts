import { randomInt } from 'node:crypto';
import { Template } from '@huggingface/jinja';
import type { TextSpan } from './user-span-encoder.js';

/** The fields of a chat message that a template may read; `content` and `name` are the user's text. */
export interface ChatMessage {
  readonly role: string;
  readonly content: string;
  readonly name?: string | undefined;
}

/** A rendered chat prompt and where in it the messages' own text lies. */
export interface RenderedChat {
  readonly text: string;
  readonly userSpans: TextSpan[];
}

/** The template raised an error or used something @huggingface/jinja does not support. */
export class ChatTemplateRenderError extends Error {
  constructor(readonly detail: string, options?: ErrorOptions) {
    super(`the chat template failed on these messages: ${detail}`, options);
    this.name = new.target.name;
  }
}

/**
 * The template changes message text that spells a special token (cuts it, for instance), so the rendered
 * prompt cannot be told apart from the template's own markup there.
 */
export class UntraceableUserTextError extends Error {
  constructor() {
    super('a message spells a special token and the chat template rewrites message text, so that text cannot be ' +
      'kept apart from the template\'s own special tokens; remove the special-token text from the messages');
    this.name = new.target.name;
  }
}

// Private-use code points open, split and close a marker; between them a nonce and the marker's number.
const OPEN = '\uE000';
const SPLIT = '\uE001';
const CLOSE = '\uE002';

/**
 * Renders `template` over the messages exactly as before (`text` is the same string) and finds where the
 * messages' text landed, so that the encoder can treat special-token text there as plain text.
 *
 * Where text lands is learned by rendering again with markers in place of the user's strings and checking
 * that putting the strings back gives the real rendering; that also catches templates that trim, cut or test
 * message text, where the markers would not behave as the text does.
 *  1. Each whole string replaced by a marker: the spans are the whole strings, so that no special token can
 *     be formed across a string's edge either.
 *  2. When that fails (e.g. `content | trim` on text with outer spaces), only each special-token text inside
 *     the strings is replaced; a marker holds no whitespace, so trimming treats it as the text it stands for.
 *  3. When that fails too and some message spells a special token, UntraceableUserTextError: no guess about
 *     which special tokens are the template's. With no special-token text there is nothing to protect.
 *
 * `findSpecialText` gives the special-token occurrences in a string, as the encoder would see them.
 */
export function renderChatTemplate(
  template: string,
  messages: readonly ChatMessage[],
  variables: Readonly<Record<string, unknown>>,
  findSpecialText: (text: string) => TextSpan[],
): RenderedChat {
  let compiled: Template;
  let text: string;
  const render = (msgs: readonly ChatMessage[]): string => compiled.render({ ...variables, messages: msgs });
  try {
    compiled = new Template(template);
    text = render(messages);
  } catch (error) {
    throw new ChatTemplateRenderError(error instanceof Error ? error.message : String(error), { cause: error });
  }

  const userStrings = messages.flatMap((m) => (m.name === undefined ? [m.content] : [m.content, m.name]));
  const nonce = freshNonce([template, text, ...userStrings]);
  const marker = (n: number): string => `${OPEN}${nonce}${SPLIT}${n}${CLOSE}`;
  // Renders with markers in place of user text and puts the text back; undefined unless that is `text`.
  const trace = (withMarkers: readonly ChatMessage[], originals: readonly string[]): TextSpan[] | undefined => {
    let rendered: string;
    try {
      rendered = render(withMarkers);
    } catch {
      return undefined;
    }
    const spans: TextSpan[] = [];
    let restored = '';
    let last = 0;
    for (const m of rendered.matchAll(new RegExp(`${OPEN}${nonce}${SPLIT}(\\d+)${CLOSE}`, 'g'))) {
      const original = originals[Number(m[1])];
      if (original === undefined) return undefined;
      restored += rendered.slice(last, m.index);
      if (original.length > 0) spans.push({ start: restored.length, end: restored.length + original.length });
      restored += original;
      last = m.index + m[0].length;
    }
    restored += rendered.slice(last);
    return restored === text ? spans : undefined;
  };

  const wholeStrings: string[] = [];
  const replaceWhole = (s: string): string => marker(wholeStrings.push(s) - 1);
  const whole = trace(mapUserText(messages, replaceWhole), wholeStrings);
  if (whole !== undefined) return { text, userSpans: whole };

  if (!userStrings.some((s) => findSpecialText(s).length > 0)) return { text, userSpans: [] };
  const specialTexts: string[] = [];
  const replaceSpecial = (s: string): string => {
    let out = '';
    let last = 0;
    for (const { start, end } of findSpecialText(s)) {
      out += s.slice(last, start) + marker(specialTexts.push(s.slice(start, end)) - 1);
      last = end;
    }
    return out + s.slice(last);
  };
  const special = trace(mapUserText(messages, replaceSpecial), specialTexts);
  if (special !== undefined) return { text, userSpans: special };
  throw new UntraceableUserTextError();
}

function mapUserText(messages: readonly ChatMessage[], f: (s: string) => string): ChatMessage[] {
  return messages.map((m) => (m.name === undefined ? { ...m, content: f(m.content) } : { ...m, content: f(m.content), name: f(m.name) }));
}

// Digits only, so that case filters (upper, title) leave markers alone; absent from everything rendered.
function freshNonce(texts: readonly string[]): string {
  for (;;) {
    const nonce = String(randomInt(1e9, 1e12));
    if (!texts.some((t) => t.includes(nonce))) return nonce;
  }
}
