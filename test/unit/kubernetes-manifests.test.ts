// deploy/kubernetes, checked without a cluster. Every document of every YAML file there is validated
// against the published schema of its kind: core, apps, autoscaling, policy and RBAC objects with
// kubernetes-models (Kubernetes' OpenAPI), Gateway and HTTPRoute with @kubernetes-models/gateway-api,
// and the Gateway API Inference Extension's objects with ajv against the openAPIV3Schema of the CRDs of
// the release the manifests target (test/fixtures/gateway-api-inference-extension-v1.5.0, vendored
// unmodified). A document whose kind has no schema here fails the test rather than being skipped.
// Then the objects are checked against each other (selectors, ports, names, grace periods) and against
// the server itself (the routes the probes and the scrapers use, the metrics the HPA and the EPP read,
// the MOE_SERVE_* variables the Deployment sets).
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { before, describe, test } from 'node:test';
import { Ajv, type ErrorObject } from 'ajv';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Service, type IService } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { Deployment, type IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import { HorizontalPodAutoscaler, type IHorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { PodDisruptionBudget, type IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import { RoleBinding, type IRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import { Gateway, type IGateway } from '@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/Gateway';
import { HTTPRoute, type IHTTPRoute } from '@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute';
import { buildApp } from '../../src/api/build-app.js';
import { SERVE_HELP } from '../../src/cli/serve-command.js';
import { envVarName } from '../../src/cli/env-options.js';
import { FIXTURES_DIR, REPO_ROOT } from '../helpers/paths.js';

const MANIFEST_DIR = join(REPO_ROOT, 'deploy', 'kubernetes');
/** The GAIE release the manifests target; its CRDs are vendored here. */
const GAIE_RELEASE = 'v1.5.0';
const GAIE_CRD_DIR = join(FIXTURES_DIR, `gateway-api-inference-extension-${GAIE_RELEASE}`);

// ---------------------------------------------------------------------------------------------------
// Loading

interface KubeObject {
  apiVersion?: unknown;
  kind?: unknown;
  metadata?: { name?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

interface Manifest {
  /** Relative to deploy/kubernetes. */
  readonly file: string;
  /** The document's index in its file. */
  readonly index: number;
  readonly object: KubeObject;
}

/** Every .yaml/.yml file under dir, relative to deploy/kubernetes, subdirectories included. */
function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? yamlFiles(join(dir, e.name)) : e.isFile() && /\.ya?ml$/.test(e.name) ? [relative(MANIFEST_DIR, join(dir, e.name))] : []))
    .sort();
}

/**
 * YAML files here that are not Kubernetes objects, each with what checks it: none is skipped silently.
 * The Kustomization is a Kubernetes-style document that kubectl reads, not an API object: it has its own check.
 */
const NOT_API_OBJECTS = new Map<string, string>([
  ['kustomization.yaml', 'the Kustomization lists every manifest'],
  ['prometheus-adapter/values.yaml', 'the Prometheus adapter rule turns the gauges the server exports into the metrics the HPA reads'],
]);

function loadManifests(): Manifest[] {
  const manifests: Manifest[] = [];
  for (const file of yamlFiles(MANIFEST_DIR)) {
    if (NOT_API_OBJECTS.has(file)) continue;
    parseAllDocuments(readFileSync(join(MANIFEST_DIR, file), 'utf8')).forEach((doc, index) => {
      if (doc.errors.length > 0) throw new Error(`${file} document ${index}: ${doc.errors.map((e) => e.message).join('; ')}`);
      const object: unknown = doc.toJS();
      if (object === null) return; // an empty document (a trailing ---)
      if (typeof object !== 'object' || Array.isArray(object)) throw new Error(`${file} document ${index}: not a mapping`);
      manifests.push({ file, index, object: object as KubeObject });
    });
  }
  return manifests;
}

const describeManifest = (m: Manifest) => `${m.file}#${m.index} ${String(m.object.kind)} ${m.object.metadata?.name ?? '(no name)'}`;

// ---------------------------------------------------------------------------------------------------
// Schemas: kind -> validator, which returns the problems (none when valid)

type Validator = (object: KubeObject) => string[];

interface ModelClass {
  new (data: never): { validate(): void };
}

/** Validates through a kubernetes-models class: its validate() throws a ValidationError naming the field. */
function modelValidator(model: ModelClass): Validator {
  return (object) => {
    try {
      new model(object as never).validate();
      return [];
    } catch (err) {
      return [err instanceof Error ? err.message : String(err)];
    }
  };
}

/** Built-in kinds (Kubernetes' OpenAPI) and Gateway API kinds (its CRDs), keyed `apiVersion kind`. */
const MODEL_VALIDATORS = new Map<string, Validator>([
  ['v1 ConfigMap', modelValidator(ConfigMap)],
  ['v1 Service', modelValidator(Service)],
  ['v1 ServiceAccount', modelValidator(ServiceAccount)],
  ['apps/v1 Deployment', modelValidator(Deployment)],
  ['autoscaling/v2 HorizontalPodAutoscaler', modelValidator(HorizontalPodAutoscaler)],
  ['policy/v1 PodDisruptionBudget', modelValidator(PodDisruptionBudget)],
  ['rbac.authorization.k8s.io/v1 Role', modelValidator(Role)],
  ['rbac.authorization.k8s.io/v1 RoleBinding', modelValidator(RoleBinding)],
  ['gateway.networking.k8s.io/v1 Gateway', modelValidator(Gateway)],
  ['gateway.networking.k8s.io/v1 HTTPRoute', modelValidator(HTTPRoute)],
]);

/** ObjectMeta, for the CRD objects whose schema says only `metadata: {type: object}`: a ConfigMap is metadata plus optional data. */
const validateObjectMeta = (object: KubeObject) => modelValidator(ConfigMap)({ apiVersion: 'v1', kind: 'ConfigMap', metadata: object.metadata });

/**
 * The CEL rules (x-kubernetes-validations) of the vendored CRDs, translated: ajv cannot run CEL, and a
 * rule not in this table makes the schema fail to compile, so a new rule in a new release is noticed.
 * Each runs on the object at the rule's place, after defaulting (as the API server runs them).
 */
const CEL_RULES: Record<string, (self: unknown) => boolean> = {
  // InferencePool spec.endpointPickerRef (kind defaults to Service).
  "self.kind != 'Service' || has(self.port)": (self) => {
    const ref = self as { kind?: string; port?: unknown };
    return (ref.kind ?? 'Service') !== 'Service' || ref.port !== undefined;
  },
  // InferencePool spec.targetPorts.
  'self.all(p1, self.exists_one(p2, p1.number==p2.number))': (self) => {
    const numbers = (self as { number: number }[]).map((p) => p.number);
    return new Set(numbers).size === numbers.length;
  },
};

type JsonSchema = Record<string, unknown>;

/**
 * The API server, with kubectl's default strict field validation, refuses fields a structural schema does
 * not declare; JSON Schema allows them. Closing every object that lists its properties (and does not
 * preserve unknown fields) makes ajv refuse them too: a misspelt field fails here as it would there.
 */
function closeObjects(schema: JsonSchema): JsonSchema {
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key === 'properties' && value !== null && typeof value === 'object') {
      out[key] = Object.fromEntries(Object.entries(value as Record<string, JsonSchema>).map(([k, v]) => [k, closeObjects(v)]));
    } else if ((key === 'items' || key === 'additionalProperties') && value !== null && typeof value === 'object') {
      out[key] = closeObjects(value as JsonSchema);
    } else {
      out[key] = value;
    }
  }
  if (out.properties !== undefined && out.additionalProperties === undefined && out['x-kubernetes-preserve-unknown-fields'] !== true) {
    out.additionalProperties = false;
  }
  return out;
}

interface CrdVersion {
  name: string;
  served: boolean;
  schema: { openAPIV3Schema: JsonSchema };
}
interface Crd {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { group: string; names: { kind: string }; versions: CrdVersion[] };
}

function loadCrds(): Crd[] {
  return readdirSync(GAIE_CRD_DIR)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => parse(readFileSync(join(GAIE_CRD_DIR, f), 'utf8')) as Crd);
}

function newCrdAjv(): Ajv {
  // strict: an x-kubernetes-* keyword not declared below fails compilation instead of being ignored.
  const ajv = new Ajv({ allErrors: true, strict: true, useDefaults: true });
  ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
  ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isSafeInteger(n) });
  ajv.addFormat('date-time', { type: 'string', validate: (s: string) => !Number.isNaN(Date.parse(s)) });
  // List semantics for server-side apply; the only lists with them here are in status, which no manifest sets.
  ajv.addKeyword({ keyword: 'x-kubernetes-list-type' });
  ajv.addKeyword({ keyword: 'x-kubernetes-list-map-keys' });
  ajv.addKeyword({
    keyword: 'x-kubernetes-validations',
    errors: true,
    compile(rules: { rule: string; message?: string }[]) {
      const checks = rules.map(({ rule, message }) => {
        const check = CEL_RULES[rule];
        if (check === undefined) throw new Error(`CEL rule not translated in CEL_RULES: ${rule}`);
        return { check, message: message ?? rule };
      });
      const validate = (data: unknown): boolean => {
        const failed = checks.filter((c) => !c.check(data));
        (validate as { errors?: Partial<ErrorObject>[] }).errors = failed.map((c) => ({ keyword: 'x-kubernetes-validations', message: c.message, params: {} }));
        return failed.length === 0;
      };
      return validate;
    },
  });
  return ajv;
}

function describeAjvError(e: ErrorObject): string {
  const extra = e.keyword === 'additionalProperties' ? `: ${String((e.params as { additionalProperty?: unknown }).additionalProperty)}` : '';
  return `${e.instancePath || '/'} ${e.message ?? e.keyword}${extra}`;
}

/** One validator per served version of each vendored CRD, keyed `group/version Kind`. */
function crdValidators(crds: readonly Crd[]): Map<string, Validator> {
  const ajv = newCrdAjv();
  const validators = new Map<string, Validator>();
  for (const crd of crds) {
    for (const version of crd.spec.versions.filter((v) => v.served)) {
      const validate = ajv.compile(closeObjects(version.schema.openAPIV3Schema));
      validators.set(`${crd.spec.group}/${version.name} ${crd.spec.names.kind}`, (object) => {
        // useDefaults fills defaults in, as the API server does before its CEL rules: on a copy.
        const copy = structuredClone(object);
        const problems = validate(copy) ? [] : (validate.errors ?? []).map(describeAjvError);
        return [...problems, ...validateObjectMeta(object)];
      });
    }
  }
  return validators;
}

/** DNS names, as the API server checks them (kubernetes-models' schemas do not). */
function nameProblems(object: KubeObject): string[] {
  const name = object.metadata?.name;
  if (typeof name !== 'string') return ['metadata.name is missing'];
  // A Service's name is a DNS label (RFC 1035); most other objects' a DNS subdomain (RFC 1123).
  const ok = object.kind === 'Service' ? /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/.test(name) : name.length <= 253 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(name);
  return ok ? [] : [`metadata.name ${JSON.stringify(name)} is not a valid name for a ${String(object.kind)}`];
}

function schemaProblems(object: KubeObject, validators: ReadonlyMap<string, Validator>): string[] {
  const key = `${String(object.apiVersion)} ${String(object.kind)}`;
  const validate = validators.get(key);
  if (validate === undefined) return [`no schema for ${key} (add its validator, or fix the apiVersion/kind)`];
  return [...validate(object), ...nameProblems(object)];
}

// ---------------------------------------------------------------------------------------------------
// What the server itself says: its open routes, its metrics, its flags

interface ServerFacts {
  /** GET routes that answer without the API key (not 401) while an API key is set. */
  readonly openGetRoutes: ReadonlySet<string>;
  /** Metric name -> Prometheus type, from GET /metrics. */
  readonly metricTypes: ReadonlyMap<string, string>;
  /** The flags of `moe-serve serve --help`. */
  readonly serveFlags: ReadonlySet<string>;
}

async function serverFacts(): Promise<ServerFacts> {
  const routes: string[] = [];
  const app = buildApp({ serving: () => undefined, modelName: 'tiny-moe', apiKey: 'k', onRoute: (method, url) => method === 'GET' && routes.push(url) });
  await app.ready();
  const openGetRoutes = new Set<string>();
  let metricsText = '';
  try {
    for (const url of routes.filter((r) => !r.includes(':') && !r.includes('*'))) {
      const res = await app.inject({ method: 'GET', url });
      if (res.statusCode !== 401) openGetRoutes.add(url);
      if (url === '/metrics') metricsText = res.body;
    }
  } finally {
    await app.close();
  }
  const metricTypes = new Map([...metricsText.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1] as string, m[2] as string]));
  const serveFlags = new Set([...SERVE_HELP.matchAll(/^\s+--([a-z][a-z-]*)/gm)].map((m) => m[1] as string));
  return { openGetRoutes, metricTypes, serveFlags };
}

// ---------------------------------------------------------------------------------------------------
// Cross-checks: the objects against each other and against the server

interface InferencePool extends KubeObject {
  spec: {
    targetPorts: { number: number }[];
    selector: { matchLabels: Record<string, string> };
    endpointPickerRef: { name: string; kind?: string; port?: { number: number } };
  };
}
interface InferenceObjective extends KubeObject {
  spec: { poolRef: { name: string; group?: string } };
}
interface AdapterValues {
  rules: { custom: { seriesQuery: string; resources: { overrides: Record<string, { resource: string }> }; name: { matches: string; as: string }; metricsQuery: string }[] };
}

const POOL_GROUP = 'inference.networking.k8s.io';

function find<T>(manifests: readonly Manifest[], apiVersion: string, kind: string, name?: string): T[] {
  return manifests
    .map((m) => m.object)
    .filter((o) => o.apiVersion === apiVersion && o.kind === kind && (name === undefined || o.metadata?.name === name)) as unknown as T[];
}

/** Whether every label a selector asks for is on the pods. */
const selects = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) =>
  selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);

/** What the Prometheus adapter's rule makes of a series name, or undefined when it does not match (Prometheus regexes are anchored). */
function adapterName(rule: AdapterValues['rules']['custom'][number], series: string): string | undefined {
  const selected = /__name__=~"([^"]+)"/.exec(rule.seriesQuery)?.[1];
  if (selected === undefined || !new RegExp(`^(?:${selected})$`).test(series)) return undefined;
  const matches = new RegExp(rule.name.matches);
  // The adapter expands ${1} as Go's regexp does; JavaScript's replace writes it $1.
  return matches.test(series) ? series.replace(matches, rule.name.as.replace(/\$\{(\d+)\}/g, '$$$1')) : undefined;
}

function crossCheck(manifests: readonly Manifest[], adapter: AdapterValues, server: ServerFacts): string[] {
  const problems: string[] = [];
  const expect = (ok: boolean, problem: string) => {
    if (!ok) problems.push(problem);
  };

  const [moeServe] = find<IDeployment>(manifests, 'apps/v1', 'Deployment', 'moe-serve');
  const [epp] = find<IDeployment>(manifests, 'apps/v1', 'Deployment', 'moe-serve-epp');
  const [pool] = find<InferencePool>(manifests, `${POOL_GROUP}/v1`, 'InferencePool');
  if (moeServe === undefined || epp === undefined || pool === undefined) return ['the moe-serve Deployment, the EPP Deployment and the InferencePool must all be there'];

  // The moe-serve pods.
  const podLabels = moeServe.spec?.template.metadata?.labels;
  const podSpec = moeServe.spec?.template.spec;
  const container = podSpec?.containers.find((c) => c.name === 'moe-serve');
  if (container === undefined) return ['the moe-serve Deployment has no container named moe-serve'];
  expect(selects(moeServe.spec?.selector.matchLabels, podLabels), 'the moe-serve Deployment selector does not match its pod labels');
  const ports = container.ports ?? [];
  const portNumber = (port: string | number | undefined) => (typeof port === 'number' ? port : ports.find((p) => p.name === port)?.containerPort);
  const env = new Map((container.env ?? []).map((e) => [e.name, e]));
  const envValue = (name: string) => env.get(name)?.value;
  const servedPort = Number(envValue('MOE_SERVE_PORT'));
  expect(ports.some((p) => p.containerPort === servedPort), `MOE_SERVE_PORT (${envValue('MOE_SERVE_PORT')}) is not a containerPort of moe-serve`);
  for (const name of env.keys()) {
    expect(!name.startsWith('MOE_SERVE_') || [...server.serveFlags].some((f) => envVarName(f) === name), `${name} is no flag of \`moe-serve serve --help\``);
  }
  const apiKey = env.get('MOE_SERVE_API_KEY');
  expect(apiKey?.valueFrom?.secretKeyRef !== undefined && apiKey.value === undefined, 'MOE_SERVE_API_KEY must come from a Secret (secretKeyRef), not a literal');

  // Probes: the path is a route that answers without the API key, on the port the server listens on.
  for (const [probeName, probe] of [['startupProbe', container.startupProbe], ['readinessProbe', container.readinessProbe]] as const) {
    expect(probe?.httpGet?.path === '/health', `${probeName} must GET /health`);
    expect(probe?.httpGet !== undefined && server.openGetRoutes.has(probe.httpGet.path ?? '') && portNumber(probe.httpGet.port) === servedPort, `${probeName} must reach an open route on the served port`);
  }
  const liveness = container.livenessProbe?.exec?.command?.join(' ') ?? '';
  expect(liveness.includes('/health') && liveness.includes("'failing'") && liveness.includes('MOE_SERVE_PORT'), "the liveness probe must read /health on MOE_SERVE_PORT and fail on 'failing' only");
  const annotations = moeServe.spec?.template.metadata?.annotations ?? {};
  expect(Number(annotations['prometheus.io/port']) === servedPort, 'prometheus.io/port is not the served port');
  expect(server.openGetRoutes.has(annotations['prometheus.io/path'] ?? ''), 'prometheus.io/path is not a route open without the API key');

  // Shutdown: the grace period covers the preStop pause and the drain.
  const drainSeconds = Number(envValue('MOE_SERVE_DRAIN_SECONDS'));
  const preStop = container.lifecycle?.preStop?.exec?.command ?? [];
  const preStopSeconds = preStop[0] === 'sleep' ? Number(preStop[1]) : 0;
  const grace = podSpec?.terminationGracePeriodSeconds ?? 30;
  expect(Number.isFinite(drainSeconds), 'MOE_SERVE_DRAIN_SECONDS must be set, for the grace period to be checked against it');
  expect(grace > preStopSeconds + drainSeconds, `terminationGracePeriodSeconds (${grace}) must exceed the preStop pause (${preStopSeconds}) + MOE_SERVE_DRAIN_SECONDS (${drainSeconds})`);
  expect((epp.spec?.template.spec?.terminationGracePeriodSeconds ?? 30) >= grace, "the EPP's grace period must be at least the pool pods' (the release chart's rule)");

  // Resources: memory requested = limited, so the server's memory plan (from its cgroup limit) is what the pod gets.
  const memory = container.resources;
  expect(memory?.limits?.memory !== undefined && memory.requests?.memory === memory.limits.memory, 'moe-serve memory request and limit must be set and equal');

  // The Service, the PodDisruptionBudget, the InferencePool select the pods and use their port.
  for (const service of find<IService>(manifests, 'v1', 'Service', 'moe-serve')) {
    expect(selects(service.spec?.selector, podLabels), 'the moe-serve Service does not select the moe-serve pods');
    for (const p of service.spec?.ports ?? []) expect(portNumber(p.targetPort) === servedPort, `Service port ${p.port} does not reach the served port`);
  }
  for (const pdb of find<IPodDisruptionBudget>(manifests, 'policy/v1', 'PodDisruptionBudget')) {
    expect(selects(pdb.spec?.selector?.matchLabels, podLabels), `PodDisruptionBudget ${pdb.metadata?.name} does not select the moe-serve pods`);
  }
  expect(selects(pool.spec.selector.matchLabels, podLabels), 'the InferencePool selector does not match the moe-serve pod labels');
  expect(pool.spec.targetPorts.every((p) => p.number === servedPort && ports.some((c) => c.containerPort === p.number)), 'the InferencePool targetPorts must be the containerPort moe-serve listens on');

  // The EPP: its Service is the pool's endpointPickerRef, it serves this pool, and reads /metrics.
  const pickerRef = pool.spec.endpointPickerRef;
  const [eppService] = find<IService>(manifests, 'v1', 'Service', pickerRef.name);
  expect((pickerRef.kind ?? 'Service') === 'Service' && eppService !== undefined, `endpointPickerRef ${pickerRef.name} is not a Service here`);
  expect(eppService?.spec?.ports?.some((p) => p.port === pickerRef.port?.number) === true, "endpointPickerRef's port is not a port of the EPP Service");
  expect(selects(eppService?.spec?.selector, epp.spec?.template.metadata?.labels), 'the EPP Service does not select the EPP pods');
  const eppContainer = epp.spec?.template.spec?.containers[0];
  const args = eppContainer?.args ?? [];
  const arg = (flag: string) => args[args.indexOf(flag) + 1];
  expect(args.includes('--pool-name') && arg('--pool-name') === pool.metadata?.name, '--pool-name must name the InferencePool');
  expect(arg('--pool-group') === POOL_GROUP, `--pool-group must be ${POOL_GROUP}`);
  expect(!args.some((a) => /metric/.test(a) && a !== '--tracing=false'), 'no metric flags: the EPP reads the vLLM names moe-serve exports by default');
  const eppAccount = epp.spec?.template.spec?.serviceAccountName;
  const bindings = find<IRoleBinding>(manifests, 'rbac.authorization.k8s.io/v1', 'RoleBinding').filter((b) => b.subjects?.some((s) => s.kind === 'ServiceAccount' && s.name === eppAccount));
  expect(find(manifests, 'v1', 'ServiceAccount', eppAccount).length === 1 && bindings.length >= 2, "the EPP's ServiceAccount must exist and be bound to its Roles");
  for (const binding of bindings) expect(find(manifests, 'rbac.authorization.k8s.io/v1', 'Role', binding.roleRef.name).length === 1, `RoleBinding ${binding.metadata?.name} names a Role that is not here`);
  // Its config file: from the mounted ConfigMap, declaring every plugin a profile uses, scraping an open route.
  const configPath = arg('--config-file') ?? '';
  const mount = eppContainer?.volumeMounts?.find((v) => configPath.startsWith(`${v.mountPath}/`));
  const volume = epp.spec?.template.spec?.volumes?.find((v) => v.name === mount?.name);
  const [configMap] = find<{ data?: Record<string, string> }>(manifests, 'v1', 'ConfigMap', volume?.configMap?.name);
  const configText = configMap?.data?.[configPath.slice((mount?.mountPath.length ?? 0) + 1)];
  if (configText === undefined) {
    problems.push(`the EPP's --config-file ${configPath} is not a key of a ConfigMap mounted there`);
  } else {
    const config = parse(configText) as { apiVersion: string; kind: string; plugins: { type: string; name?: string; parameters?: { path?: string } }[]; schedulingProfiles: { plugins: { pluginRef: string }[] }[] };
    expect(config.apiVersion === 'inference.networking.x-k8s.io/v1alpha1' && config.kind === 'EndpointPickerConfig', 'the EPP config must be an EndpointPickerConfig');
    const declared = new Set(config.plugins.map((p) => p.name ?? p.type));
    for (const ref of config.schedulingProfiles.flatMap((p) => p.plugins)) expect(declared.has(ref.pluginRef), `the EPP config's profile uses undeclared plugin ${ref.pluginRef}`);
    const source = config.plugins.find((p) => p.type === 'metrics-data-source');
    expect(server.openGetRoutes.has(source?.parameters?.path ?? '') && source?.parameters?.path === '/metrics', "the EPP's metrics-data-source must read /metrics, open without the API key");
  }
  // The series the EPP reads by default, which is why it has no metric flags.
  for (const name of ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc', 'vllm:lora_requests_info', 'vllm:cache_config_info']) {
    expect(server.metricTypes.get(name) === 'gauge', `the server does not export ${name} as a gauge (the EPP reads it by default)`);
  }

  // InferenceObjectives and the HTTPRoute refer to the pool; the route's parent is the Gateway.
  for (const objective of find<InferenceObjective>(manifests, 'inference.networking.x-k8s.io/v1alpha2', 'InferenceObjective')) {
    expect(objective.spec.poolRef.name === pool.metadata?.name && (objective.spec.poolRef.group ?? POOL_GROUP) === POOL_GROUP, `InferenceObjective ${objective.metadata?.name} does not refer to the InferencePool`);
  }
  const routes = find<IHTTPRoute>(manifests, 'gateway.networking.k8s.io/v1', 'HTTPRoute');
  expect(routes.length > 0, 'no HTTPRoute');
  for (const route of routes) {
    const backends = (route.spec.rules ?? []).flatMap((r) => r.backendRefs ?? []);
    expect(backends.length > 0 && backends.every((b) => b.group === POOL_GROUP && b.kind === 'InferencePool' && b.name === pool.metadata?.name), `HTTPRoute ${route.metadata?.name} must send to the InferencePool`);
    for (const parent of route.spec.parentRefs ?? []) {
      expect((parent.kind ?? 'Gateway') === 'Gateway' && find<IGateway>(manifests, 'gateway.networking.k8s.io/v1', 'Gateway', parent.name).length === 1, `HTTPRoute ${route.metadata?.name}'s parent ${parent.name} is not a Gateway here`);
    }
  }

  // The HPA scales the moe-serve Deployment on metrics the adapter makes from gauges the server exports.
  const hpas = find<IHorizontalPodAutoscaler>(manifests, 'autoscaling/v2', 'HorizontalPodAutoscaler');
  expect(hpas.length === 1, 'one HorizontalPodAutoscaler');
  expect(moeServe.spec?.replicas === undefined, 'the moe-serve Deployment must not set replicas: the HPA owns them');
  for (const hpa of hpas) {
    const target = hpa.spec?.scaleTargetRef;
    expect(target?.apiVersion === 'apps/v1' && target.kind === 'Deployment' && target.name === moeServe.metadata?.name, 'the HPA must target the moe-serve Deployment');
    const adapterMetrics = new Map<string, string>();
    for (const rule of adapter.rules.custom) {
      for (const [series, type] of server.metricTypes) {
        const name = adapterName(rule, series);
        if (name !== undefined && type === 'gauge') adapterMetrics.set(name, series);
      }
    }
    for (const metric of hpa.spec?.metrics ?? []) {
      expect(metric.type === 'Pods' && metric.pods !== undefined, 'the HPA metrics are per pod (type Pods)');
      const name = metric.pods?.metric.name ?? '';
      expect(adapterMetrics.has(name), `HPA metric ${name} is not what the Prometheus adapter makes of a gauge the server exports`);
    }
    expect(hpa.spec?.metrics?.some((m) => adapterMetrics.get(m.pods?.metric.name ?? '') === 'vllm:num_requests_waiting') === true, 'the HPA must scale on the queue (vllm:num_requests_waiting)');
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------------
// Tests

describe('deploy/kubernetes', () => {
  let manifests: Manifest[];
  let crds: Crd[];
  let validators: Map<string, Validator>;
  let adapter: AdapterValues;
  let server: ServerFacts;

  before(async () => {
    manifests = loadManifests();
    crds = loadCrds();
    validators = new Map([...MODEL_VALIDATORS, ...crdValidators(crds)]);
    adapter = parse(readFileSync(join(MANIFEST_DIR, 'prometheus-adapter', 'values.yaml'), 'utf8')) as AdapterValues;
    server = await serverFacts();
  });

  // A test's own edits of parsed YAML: `any` keeps each one a line.
  const mutated = (name: string, kind: string, change: (o: Record<string, any>) => void): Manifest[] =>
    manifests.map((m) => {
      if (m.object.kind !== kind || m.object.metadata?.name !== name) return m;
      const object = structuredClone(m.object);
      change(object);
      return { ...m, object };
    });
  const problemsOf = (ms: readonly Manifest[]) => ms.flatMap((m) => schemaProblems(m.object, validators).map((p) => `${describeManifest(m)}: ${p}`));

  test('every YAML file is parsed, and every document has a schema here: none is skipped', () => {
    assert.ok(manifests.length > 0);
    const uncovered = manifests.filter((m) => !validators.has(`${String(m.object.apiVersion)} ${String(m.object.kind)}`)).map(describeManifest);
    assert.deepEqual(uncovered, []);
    for (const file of NOT_API_OBJECTS.keys()) assert.ok(yamlFiles(MANIFEST_DIR).includes(file), `${file} is listed as checked but is not there`);
    // What a reader of the README expects to find.
    const kinds = new Set(manifests.map((m) => String(m.object.kind)));
    for (const kind of ['Deployment', 'Service', 'HorizontalPodAutoscaler', 'InferencePool', 'InferenceObjective', 'ConfigMap', 'Gateway', 'HTTPRoute']) assert.ok(kinds.has(kind), `no ${kind}`);
  });

  test(`the vendored CRDs are GAIE ${GAIE_RELEASE}'s InferencePool (v1) and InferenceObjective (v1alpha2)`, () => {
    for (const crd of crds) assert.equal(crd.metadata.annotations?.['inference.networking.k8s.io/bundle-version'], GAIE_RELEASE, crd.metadata.name);
    assert.ok(validators.has('inference.networking.k8s.io/v1 InferencePool'));
    assert.ok(validators.has('inference.networking.x-k8s.io/v1alpha2 InferenceObjective'));
  });

  test('every object is valid against its published schema', () => {
    assert.deepEqual(problemsOf(manifests), []);
  });

  test('a broken manifest fails validation', () => {
    const broken: [string, Manifest[], RegExp][] = [
      ['replicas of the wrong type', mutated('moe-serve-epp', 'Deployment', (o) => (o.spec.replicas = 'one')), /replicas must be integer/],
      ['an unknown apiVersion', mutated('moe-serve', 'Deployment', (o) => (o.apiVersion = 'apps/v2')), /no schema for apps\/v2 Deployment/],
      ['a container without a name', mutated('moe-serve', 'Deployment', (o) => delete o.spec.template.spec.containers[0].name), /must have required property '?name'?/],
      ['an HPA metric target of the wrong type', mutated('moe-serve', 'HorizontalPodAutoscaler', (o) => (o.spec.metrics[0].pods.target.type = 7)), /type must be string/],
      ['an InferencePool without its selector', mutated('moe-serve', 'InferencePool', (o) => delete o.spec.selector), /must have required property 'selector'/],
      ['an InferencePool port out of range', mutated('moe-serve', 'InferencePool', (o) => (o.spec.targetPorts[0].number = 70000)), /must be <= 65535/],
      ['a misspelt InferencePool field', mutated('moe-serve', 'InferencePool', (o) => (o.spec.targetPort = o.spec.targetPorts)), /must NOT have additional properties/],
      ['a repeated InferencePool port (a CEL rule)', mutated('moe-serve', 'InferencePool', (o) => o.spec.targetPorts.push({ number: 8000 })), /port number must be unique/],
      ['an endpointPickerRef to a Service without a port (a CEL rule, after defaulting)', mutated('moe-serve', 'InferencePool', (o) => delete o.spec.endpointPickerRef.port), /port is required when kind is 'Service'/],
      ['an InferenceObjective priority of the wrong type', mutated('batch', 'InferenceObjective', (o) => (o.spec.priority = 'low')), /priority must be integer/],
      ['a Gateway listener without a port', mutated('inference-gateway', 'Gateway', (o) => delete o.spec.listeners[0].port), /must have required property 'port'/],
      ['an invalid Service name', mutated('moe-serve', 'Service', (o) => (o.metadata.name = 'Moe_Serve')), /not a valid name/],
      ['a label value that is not a string', mutated('interactive', 'InferenceObjective', (o) => (o.metadata.labels = { tier: 1 })), /must be string/],
    ];
    for (const [what, ms, expected] of broken) {
      const problems = problemsOf(ms);
      assert.ok(problems.some((p) => expected.test(p)), `${what}: expected a problem matching ${expected}, got ${JSON.stringify(problems)}`);
    }
  });

  test('the objects agree with each other and with the server', () => {
    assert.deepEqual(crossCheck(manifests, adapter, server), []);
  });

  test('the cross-checks catch a mismatch', () => {
    const broken: [string, Manifest[], RegExp][] = [
      ['pod labels the selectors do not match', mutated('moe-serve', 'Deployment', (o) => (o.spec.template.metadata.labels = { app: 'other', 'inference.networking.k8s.io/engine-type': 'vllm' })), /InferencePool selector/],
      ['a container port that is not the pool target port', mutated('moe-serve', 'Deployment', (o) => (o.spec.template.spec.containers[0].ports[0].containerPort = 9000)), /InferencePool targetPorts/],
      ['a grace period shorter than the drain', mutated('moe-serve', 'Deployment', (o) => (o.spec.template.spec.terminationGracePeriodSeconds = 30)), /terminationGracePeriodSeconds \(30\) must exceed/],
      ['a probe on a route that does not exist', mutated('moe-serve', 'Deployment', (o) => (o.spec.template.spec.containers[0].readinessProbe.httpGet.path = '/healthz')), /readinessProbe/],
      ['a misspelt MOE_SERVE_ variable', mutated('moe-serve', 'Deployment', (o) => (o.spec.template.spec.containers[0].env[0].name = 'MOE_SERVE_HOSTNAME')), /MOE_SERVE_HOSTNAME is no flag/],
      ['an HPA on another Deployment', mutated('moe-serve', 'HorizontalPodAutoscaler', (o) => (o.spec.scaleTargetRef.name = 'moe-serve-epp')), /target the moe-serve Deployment/],
      ['an HPA metric the adapter does not make', mutated('moe-serve', 'HorizontalPodAutoscaler', (o) => (o.spec.metrics[0].pods.metric.name = 'vllm:num_requests_waiting')), /not what the Prometheus adapter makes/],
      ['an EPP for another pool', mutated('moe-serve-epp', 'Deployment', (o) => (o.spec.template.spec.containers[0].args[1] = 'other-pool')), /--pool-name/],
      ['an HTTPRoute to a Service', mutated('moe-serve', 'HTTPRoute', (o) => (o.spec.rules[0].backendRefs[0] = { name: 'moe-serve', port: 8000 })), /must send to the InferencePool/],
    ];
    for (const [what, ms, expected] of broken) {
      const problems = crossCheck(ms, adapter, server);
      assert.ok(problems.some((p) => expected.test(p)), `${what}: expected a problem matching ${expected}, got ${JSON.stringify(problems)}`);
    }
  });

  test('the Kustomization lists every manifest', () => {
    const kustomization = parse(readFileSync(join(MANIFEST_DIR, 'kustomization.yaml'), 'utf8')) as { apiVersion: string; kind: string; resources: string[] };
    assert.equal(kustomization.apiVersion, 'kustomize.config.k8s.io/v1beta1');
    assert.equal(kustomization.kind, 'Kustomization');
    assert.deepEqual([...kustomization.resources].sort(), [...new Set(manifests.map((m) => m.file))].sort());
  });

  test('the Prometheus adapter rule turns the gauges the server exports into the metrics the HPA reads', () => {
    const [rule] = adapter.rules.custom;
    assert.ok(rule !== undefined);
    assert.deepEqual(rule.resources.overrides, { namespace: { resource: 'namespace' }, pod: { resource: 'pod' } });
    for (const placeholder of ['<<.Series>>', '<<.LabelMatchers>>', '<<.GroupBy>>']) assert.ok(rule.metricsQuery.includes(placeholder), placeholder);
    assert.equal(adapterName(rule, 'vllm:num_requests_waiting'), 'vllm_num_requests_waiting');
    assert.equal(adapterName(rule, 'vllm:num_requests_running'), 'vllm_num_requests_running');
    assert.equal(adapterName(rule, 'vllm:kv_cache_usage_perc'), undefined);
    assert.equal(server.metricTypes.get('vllm:num_requests_waiting'), 'gauge');
  });

  test('the probes and the metrics scrape reach the server without the API key', () => {
    assert.ok(server.openGetRoutes.has('/health'));
    assert.ok(server.openGetRoutes.has('/metrics'));
    assert.ok(!server.openGetRoutes.has('/v1/models'), 'the API routes need the key');
  });
});
