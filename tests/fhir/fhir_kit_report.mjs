// Reads a DiagnosticReport with fhir-kit-client (npm): read, vread of version 1, instance history.
// Usage: node fhir_kit_report.mjs NODE_MODULES BASE_URL REPORT_ID
import { pathToFileURL } from "url";
const [modules, baseUrl, id] = process.argv.slice(2);
const entry = new URL("fhir-kit-client/dist/index.js", pathToFileURL(modules + "/"));
const kit = await import(entry.href);
const Client = kit.default || kit.Client;
const client = new Client({ baseUrl });
const read = await client.read({ resourceType: "DiagnosticReport", id });
const first = await client.vread({ resourceType: "DiagnosticReport", id, version: "1" });
const history = await client.history({ resourceType: "DiagnosticReport", id });
const versions = (history.entry || []).map((e) => [e.resource.meta.versionId, e.resource.status]);
process.stdout.write(JSON.stringify({
  read: [read.meta.versionId, read.status], first: [first.meta.versionId, first.status], versions,
}) + "\n");
