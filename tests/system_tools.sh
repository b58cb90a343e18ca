#!/usr/bin/env bash
# Debian packages the tests drive as real programs: Chromium and its driver (the web
# page's browser tests), Prometheus with promtool (the monitoring tests), Java (Spark, for
# batch scoring's tests; pyspark itself comes from requirements-batch.lock) and nginx (the
# load balancer in front of a fleet of replicas, tests/test_fleet.py). Installed with
# apt-get when missing and this runs as root; otherwise the tests that need them say
# which package is missing.
set -euo pipefail
wanted=(chromium:chromium chromedriver:chromium-driver prometheus:prometheus promtool:prometheus
    java:default-jre-headless nginx:nginx)
missing=()
for pair in "${wanted[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system_tools: missing ${missing[*]} (install them with apt-get as root)" >&2
    exit 0
fi
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "system_tools: installing $packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $packages >/dev/null
