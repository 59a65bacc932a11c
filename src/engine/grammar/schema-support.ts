// What of JSON Schema constrained decoding cannot enforce, found before compiling. xgrammar (0.1.27) compiles
// these keywords without a word and ignores them, so the output could break the schema the API promised to
// follow; we refuse them instead, as OpenAI's strict mode does. What xgrammar refuses itself (an unknown type,
// an unresolvable $ref, minimum > maximum, a regex with lookahead) it reports when compiling.

/** Keywords xgrammar ignores, so a generated value could violate them. */
const UNENFORCED_KEYWORDS = new Set([
  'not', 'if', 'then', 'else', 'dependentRequired', 'dependentSchemas', 'dependencies',
  'contains', 'minContains', 'maxContains', 'multipleOf', 'additionalItems',
]);

// Where a schema holds subschemas: one, a list, or a map of names to subschemas. Anything else (enum, const,
// default, examples) is data, whose keys are not keywords.
const ONE_SUBSCHEMA = ['items', 'additionalProperties', 'unevaluatedProperties', 'unevaluatedItems', 'propertyNames'];
const SUBSCHEMA_LISTS = ['anyOf', 'oneOf', 'allOf', 'prefixItems'];
const SUBSCHEMA_MAPS = ['properties', 'patternProperties', '$defs', 'definitions'];

export interface SchemaProblem {
  /** JSON Pointer to the subschema, '' for the root. */
  readonly pointer: string;
  readonly reason: string;
}

/** The first part of `schema` that constrained decoding cannot enforce, or undefined when there is none. */
export function findUnenforceableSchemaPart(schema: unknown, pointer = ''): SchemaProblem | undefined {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) return undefined;
  const node = schema as Record<string, unknown>;
  for (const keyword of Object.keys(node)) {
    if (UNENFORCED_KEYWORDS.has(keyword)) return { pointer, reason: `"${keyword}" is not supported by constrained decoding` };
  }
  if (node['uniqueItems'] === true) return { pointer, reason: '"uniqueItems": true is not supported by constrained decoding' };
  const missing = requiredButForbidden(node);
  if (missing !== undefined) {
    return { pointer, reason: `"${missing}" is required but not in "properties", and no other property is allowed (add it to "properties" or allow additionalProperties)` };
  }
  for (const key of ONE_SUBSCHEMA) {
    const found = findUnenforceableSchemaPart(node[key], `${pointer}/${key}`);
    if (found) return found;
  }
  for (const key of SUBSCHEMA_LISTS) {
    const list = node[key];
    if (!Array.isArray(list)) continue;
    for (const [i, sub] of list.entries()) {
      const found = findUnenforceableSchemaPart(sub, `${pointer}/${key}/${i}`);
      if (found) return found;
    }
  }
  for (const key of SUBSCHEMA_MAPS) {
    const map = node[key];
    if (typeof map !== 'object' || map === null || Array.isArray(map)) continue;
    for (const [name, sub] of Object.entries(map)) {
      const found = findUnenforceableSchemaPart(sub, `${pointer}/${key}/${escapePointer(name)}`);
      if (found) return found;
    }
  }
  return undefined;
}

// We compile in xgrammar's strict mode (properties not named in the schema are refused unless the schema allows
// them), where a required property missing from "properties" can never be written: xgrammar would drop it from
// the grammar and the output would lack it.
function requiredButForbidden(node: Record<string, unknown>): string | undefined {
  const required = node['required'];
  if (!Array.isArray(required)) return undefined;
  const allowsOthers = (node['additionalProperties'] !== undefined && node['additionalProperties'] !== false) ||
    (node['unevaluatedProperties'] !== undefined && node['unevaluatedProperties'] !== false) ||
    node['patternProperties'] !== undefined;
  if (allowsOthers) return undefined;
  const properties = node['properties'];
  const named = typeof properties === 'object' && properties !== null ? properties : {};
  return required.find((name): name is string => typeof name === 'string' && !Object.hasOwn(named, name));
}

function escapePointer(name: string): string {
  return name.replaceAll('~', '~0').replaceAll('/', '~1');
}
