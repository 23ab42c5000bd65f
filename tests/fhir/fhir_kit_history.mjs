// Type- and system-level history with fhir-kit-client (npm): typeHistory, systemHistory, then nextPage to the end.
// Usage: node fhir_kit_history.mjs NODE_MODULES BASE_URL
import { pathToFileURL } from "url";
const [modules, baseUrl] = process.argv.slice(2);
const entry = new URL("fhir-kit-client/dist/index.js", pathToFileURL(modules + "/"));
const kit = await import(entry.href);
const Client = kit.default || kit.Client;
const client = new Client({ baseUrl });
const versions = (bundle) => (bundle.entry || []).map((e) => `${e.resource.resourceType}/${e.resource.id}/${e.resource.meta.versionId}`);
const typed = await client.typeHistory({ resourceType: "DiagnosticReport" });
let page = await client.systemHistory();
const system = [...versions(page)];
while ((page = await client.nextPage({ bundle: page }))) system.push(...versions(page));
process.stdout.write(JSON.stringify({ type: typed.type, typeVersions: versions(typed), system }) + "\n");
