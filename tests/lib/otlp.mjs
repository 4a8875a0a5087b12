// A local OTLP/HTTP traces receiver for tests: decodes each export with protobufjs and the
// OpenTelemetry project's own .proto files (tests/lib/otlp/, from opentelemetry-proto), and
// keeps the spans, flattened with their resource's attributes.
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

const PROTO_DIR = fileURLToPath(new URL('./otlp/', import.meta.url));
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => path.join(PROTO_DIR, target);
root.loadSync('opentelemetry/proto/collector/trace/v1/trace_service.proto');
export const ExportTraceServiceRequest = root.lookupType(
  'opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest');
const ExportTraceServiceResponse = root.lookupType(
  'opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse');
const SpanKind = root.lookupEnum('opentelemetry.proto.trace.v1.Span.SpanKind').values;
const StatusCode = root.lookupEnum('opentelemetry.proto.trace.v1.Status.StatusCode').values;
export { SpanKind, StatusCode };

const hex = (b) => (b && b.length ? Buffer.from(b).toString('hex') : '');

function anyValue(v) {
  if (!v) return undefined;
  if (v.stringValue !== undefined && v.stringValue !== null) return v.stringValue;
  if (v.intValue !== undefined && v.intValue !== null) return Number(v.intValue);
  if (v.doubleValue !== undefined && v.doubleValue !== null) return v.doubleValue;
  if (v.boolValue !== undefined && v.boolValue !== null) return v.boolValue;
  return undefined;
}

export function attrs(list) {
  const out = {};
  for (const kv of list ?? []) out[kv.key] = anyValue(kv.value);
  return out;
}

// Decodes one export body into flat spans.
export function decodeSpans(body) {
  const msg = ExportTraceServiceRequest.decode(body);
  const obj = ExportTraceServiceRequest.toObject(msg, { longs: String, defaults: false, oneofs: true });
  const spans = [];
  for (const rs of obj.resourceSpans ?? []) {
    const resource = attrs(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        spans.push({
          traceId: hex(s.traceId),
          spanId: hex(s.spanId),
          parentSpanId: hex(s.parentSpanId),
          traceState: s.traceState ?? '',
          name: s.name,
          kind: s.kind,
          start: BigInt(s.startTimeUnixNano ?? 0),
          end: BigInt(s.endTimeUnixNano ?? 0),
          attributes: attrs(s.attributes),
          status: { code: s.status?.code ?? 0, message: s.status?.message ?? '' },
          flags: s.flags ?? 0,
          droppedAttributesCount: s.droppedAttributesCount ?? 0,
          resource,
          scope: ss.scope,
        });
      }
    }
  }
  return spans;
}

// startCollector({hang}): an OTLP/HTTP receiver on a free loopback port. `hang`: it takes
// the request and never answers (a collector that is stuck).
export async function startCollector({ hang = false } = {}) {
  const state = { exports: [], spans: [], raw: [], headers: [], problems: [] };
  const sockets = new Set();
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      state.headers.push(req.headers);
      if (hang) return;
      if (req.method !== 'POST' || req.url !== '/v1/traces')
        state.problems.push(`${req.method} ${req.url}`);
      if (req.headers['content-type'] !== 'application/x-protobuf')
        state.problems.push(`content-type ${req.headers['content-type']}`);
      try {
        const spans = decodeSpans(body);
        state.raw.push(body);
        state.exports.push(spans);
        state.spans.push(...spans);
      } catch (err) {
        state.problems.push(`undecodable export: ${err.message}`);
      }
      const out = ExportTraceServiceResponse.encode(ExportTraceServiceResponse.create({})).finish();
      res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': out.length });
      res.end(Buffer.from(out));
    });
  });
  srv.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  return {
    ...state,
    state,
    port,
    endpoint: `http://127.0.0.1:${port}/v1/traces`,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => srv.close(() => resolve()));
    },
  };
}

// A port nothing listens on (bound once, then closed).
export async function deadPort() {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise((resolve) => s.close(resolve));
  return port;
}
