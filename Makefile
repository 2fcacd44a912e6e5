# Two commands do all the set-up:  `make demo` starts a whole CDN on this
# machine, `make test` runs the tests. Both install what they need.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
APT    := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

.PHONY: demo test test-fast lint bench bench-dns speed hitspeed hitprofile viewers10k faults geodb deps-video deps-test clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench: $(STAMP)
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@

# ffmpeg makes the demo origin's real video.
deps-video:
	@command -v ffmpeg >/dev/null || { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq ffmpeg; }

# Real clients for the tests: ffmpeg, headless Chromium with hls.js, dig, curl; Prometheus's promtool
# (checks /metrics) and systemd-analyze (checks deploy/systemd).
deps-test: deps-video
	@command -v chromium >/dev/null && command -v curl >/dev/null && command -v dig >/dev/null && \
	  command -v nghttp >/dev/null && command -v h2load >/dev/null || \
	  { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq chromium curl bind9-dnsutils \
	    nghttp2-client; }
	@command -v promtool >/dev/null && command -v systemd-analyze >/dev/null || \
	  { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends prometheus systemd; }
	@[ -d tests/players/node_modules/hls.js ] && [ -d tests/players/node_modules/dashjs ] && [ -d tests/players/node_modules/playwright-core ] || \
	  (cd tests/players && npm ci --no-audit --no-fund --loglevel=error)

demo: $(STAMP) deps-video
	$(VENV)/bin/livecdn demo

# Lint, then every test.
test: lint deps-test
	$(PY) -m pytest

# Lint, then the tests not marked slow (no real processes or players): seconds, and no Debian packages.
test-fast: lint
	$(PY) -m pytest -m "not slow"

# ruff over the tree, mypy over the packages (setup.cfg [mypy] lists them); the import contracts are a test.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Figures for the data path (coalescing, viewers, memory), side by side with nginx.
bench: $(VENV)/.bench deps-video
	@command -v nginx >/dev/null || { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq nginx; }
	$(PY) benchmarks/datapath.py

# The router's figures: dnsperf against the router and gdnsd 3 (geoip plugin), and failover time.
bench-dns: $(VENV)/.bench
	@command -v dnsperf >/dev/null && command -v gdnsd >/dev/null && command -v dig >/dev/null || \
	  { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq dnsperf gdnsd bind9-dnsutils; }
	$(PY) benchmarks/dns_bench.py

# Hits per second beside nginx proxy_cache (plain and with open_file_cache), Varnish and Traffic Server
# (installs nginx, varnish, trafficserver, wrk): a dated section of benchmarks/RESULTS.md.
speed: $(VENV)/.bench
	@PATH="$$PATH:/usr/sbin"; command -v nginx >/dev/null && command -v varnishd >/dev/null && \
	  command -v traffic_server >/dev/null && command -v wrk >/dev/null || \
	  { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq nginx varnish trafficserver wrk; }
	$(PY) benchmarks/speed.py

# Cached playlist hits over HTTP/1.1 and h2c beside nginx with open_file_cache (issue 16).
hitspeed: $(VENV)/.bench
	@command -v nginx >/dev/null && command -v wrk >/dev/null && command -v h2load >/dev/null || \
	  { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq nginx wrk nghttp2-client; }
	$(PY) benchmarks/hitspeed.py

# Instructions per cached playlist hit of a running edge and where they go (callgrind, py-spy from the bench extra).
hitprofile: $(VENV)/.bench
	@command -v valgrind >/dev/null && command -v wrk >/dev/null && command -v h2load >/dev/null || \
	  { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq valgrind wrk nghttp2-client; }
	$(PY) benchmarks/hitprofile.py
	$(PY) benchmarks/hitprofile.py --h2

# 10,000 keep-alive viewers on one edge process, then on nginx (installs nginx): p99, RSS and CPU per viewer.
viewers10k: $(VENV)/.bench
	@PATH="$$PATH:/usr/sbin"; command -v nginx >/dev/null || \
	  { $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq nginx; }
	$(PY) benchmarks/viewers10k.py

# Viewers through a hung shield, a hung origin, an origin 500 storm; nginx use_stale beside (needs nginx).
faults: $(VENV)/.bench
	$(PY) benchmarks/faults.py

# The demo's geo database is generated from its readable source; rebuild after editing the JSON.
geodb: $(STAMP)
	$(PY) -m geo.builddb configs/demo-geo.json configs/demo-geo.mmdb

clean:
	rm -rf $(VENV) tests/players/node_modules build *.egg-info
