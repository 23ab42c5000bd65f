// Finds a DiagnosticReport with fhir-kit-client (npm) and fetches the documents its presentedForm names by url
// (Binary read); prints each document's content type and the SHA-256 of its decoded bytes.
// Usage: node fhir_kit_binary.mjs NODE_MODULES BASE_URL ACCESSION
import { createHash } from "crypto";
import { pathToFileURL } from "url";
const [modules, baseUrl, accession] = process.argv.slice(2);
const entry = new URL("fhir-kit-client/dist/index.js", pathToFileURL(modules + "/"));
const kit = await import(entry.href);
const Client = kit.default || kit.Client;
const client = new Client({ baseUrl });
const bundle = await client.search({ resourceType: "DiagnosticReport", searchParams: { identifier: accession } });
const report = bundle.entry[0].resource;
const documents = [];
for (const form of report.presentedForm.filter((f) => f.url)) {
  const [resourceType, id] = form.url.split("/");
  const binary = await client.read({ resourceType, id });
  const bytes = Buffer.from(binary.data, "base64");
  documents.push({ url: form.url, contentType: binary.contentType, sha256: createHash("sha256").update(bytes).digest("hex") });
}
process.stdout.write(JSON.stringify({ id: report.id, documents }) + "\n");
