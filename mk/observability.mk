# Observability: Prometheus, Grafana, the status page, their tests. See
# observability/README.md. Included by the root Makefile (`-include mk/*.mk`).

.PHONY: observability-deps observability-check test-observability observability-local observability-pull

observability-deps: ## Install promtool/prometheus and chromium (Debian packages) where missing
	@scripts/observability-deps.sh

observability-check: observability-deps ## promtool check config on observability/prometheus*.yml
	promtool check config observability/prometheus.yml
	promtool check config observability/prometheus-local.yml

test-observability: observability-deps build ## Real Prometheus + headless Chromium against live clusters (installs them first)
	$(CARGO) test -p kvstore-server --test observability --test observability_e2e -- --include-ignored --test-threads=1 --nocapture

observability-local: ## Debian's prometheus on 127.0.0.1:9090 scraping `make cluster-local` (foreground)
	@scripts/observability-local.sh

observability-pull: ## Pull the Prometheus and Grafana images for `make cluster` (needs a registry)
	docker pull $(PROMETHEUS_IMAGE)
	docker pull $(GRAFANA_IMAGE)
