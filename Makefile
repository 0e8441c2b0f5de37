# The two commands the README opens with:
#   make proxy   set up .venv and run butter on 127.0.0.1:8080 (CA in certs/)
#   make test    set up .venv and run every test
PORT ?= 8080
MODE ?= auto
ARGS ?=

.PHONY: proxy test setup bench certs

setup:
	@scripts/setup-env.sh

certs: setup
	@.venv/bin/python scripts/make_certs.py

proxy: certs
	.venv/bin/mitmdump -s addon/butter.py --listen-host 127.0.0.1 -p $(PORT) \
		--set confdir=certs --set butter_mode=$(MODE) $(ARGS)

test: setup
	.venv/bin/python -m pytest -q $(ARGS)

bench: setup
	.venv/bin/python bench/bench.py $(ARGS)
