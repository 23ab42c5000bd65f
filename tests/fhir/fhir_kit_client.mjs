// Reads and searches the radbridge FHIR API with fhir-kit-client (npm), following next links to the end.
// Usage: node fhir_kit_client.mjs NODE_MODULES BASE_URL PATIENT_REFERENCE STUDY_ID
import { pathToFileURL } from "url";
const [modules, baseUrl, patient, studyId] = process.argv.slice(2);
const entry = new URL("fhir-kit-client/dist/index.js", pathToFileURL(modules + "/"));
const kit = await import(entry.href);
const Client = kit.default || kit.Client;
const client = new Client({ baseUrl });
const read = await client.read({ resourceType: "ImagingStudy", id: studyId });
const pages = [];
let bundle = await client.search({ resourceType: "ImagingStudy", searchParams: { patient, _count: 3 } });
while (bundle) {
  pages.push((bundle.entry || []).map((e) => e.resource.id));
  bundle = await client.nextPage({ bundle });
}
let missing;
try {
  await client.read({ resourceType: "ImagingStudy", id: "1.2.3.4.5.6.7.8.9" });
} catch (e) {
  missing = { status: e.response.status, outcome: e.response.data.issue[0].code };
}
process.stdout.write(JSON.stringify({ read: { id: read.id, status: read.status }, pages, missing }) + "\n");
