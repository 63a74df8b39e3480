#!/usr/bin/env bash
# Runs Autobahn|Testsuite's fuzzingclient (../shared/autobahn) against
# `throng serve`'s /echo on each backend, and fails if any case FAILED.
#
#   scripts/autobahn.sh                       both backends: cases 1-10 and a
#                                             subset of 12 and 13 (compression)
#                                             that covers each data set,
#                                             fragmenting, and every window and
#                                             context offer
#   CASES='["*"]' scripts/autobahn.sh         everything (about 30 minutes a backend)
#   BACKENDS=epoll scripts/autobahn.sh
#
# It needs Debian's python3-twisted, python3-autobahn and python3-jinja2 and
# Debian's /usr/bin/python3. Without them it says so and exits 0, unless
# AUTOBAHN_REQUIRED=1 (CI sets it), when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=${AUTOBAHN_DIR:-../shared/autobahn}
cases=${CASES:-'["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*","12.1.1","12.1.5","12.1.11","12.1.18","12.2.4","12.3.9","12.4.16","12.5.14","13.1.3","13.2.10","13.3.5","13.3.12","13.4.8","13.5.6","13.5.17","13.6.11","13.7.2","13.7.15"]'}
exclude=${EXCLUDE:-'[]'}
backends=${BACKENDS:-epoll netpoll}
port=${AUTOBAHN_PORT:-18580}
extra=${SERVE_FLAGS:-}

if [ ! -d "$suite/autobahntestsuite" ] || ! /usr/bin/python3 -c 'import twisted, autobahn, jinja2' 2>/dev/null; then
	msg="autobahn: skipped: needs $suite and Debian's python3-twisted python3-autobahn python3-jinja2"
	if [ "${AUTOBAHN_REQUIRED:-0}" = 1 ]; then echo "$msg" >&2; exit 1; fi
	echo "$msg"
	exit 0
fi
suite=$(cd "$suite" && pwd)

go build -o bin/throng ./cmd/throng
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

status=0
for b in $backends; do
	# shellcheck disable=SC2086 # SERVE_FLAGS is a list of flags
	bin/throng serve --poller "$b" --auth off --endpoints echo --compression on --rate -1 --max-message-size 16777216 \
		--ws-addr "127.0.0.1:$port" --http-addr "127.0.0.1:$((port + 1))" --log-level error $extra &
	pid=$!
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		kill -0 "$pid" 2>/dev/null || { echo "autobahn: $b: throng serve did not start" >&2; exit 1; }
		sleep 0.1
	done
	cat >"$work/fuzzingclient.json" <<JSON
{"outdir": "$work/reports-$b", "servers": [{"agent": "throng-$b", "url": "ws://127.0.0.1:$port/echo"}],
 "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
JSON
	(cd "$work" && PYTHONPATH="$suite" timeout 1800 /usr/bin/python3 -c 'from autobahntestsuite.wstest import run; run()' \
		-m fuzzingclient -s fuzzingclient.json >"$work/wstest-$b.log" 2>&1) || {
		echo "autobahn: $b: the fuzzingclient failed:" >&2
		tail -20 "$work/wstest-$b.log" >&2
		status=1
	}
	kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
	/usr/bin/python3 - "$work/reports-$b/index.json" "$b" <<'PY' || status=1
import collections, json, sys
path, backend = sys.argv[1], sys.argv[2]
try:
    idx = json.load(open(path))
except OSError as e:
    sys.exit(f"autobahn: {backend}: no report: {e}")
counts, failed = collections.Counter(), []
for agent in idx.values():
    for case, r in agent.items():
        counts[r["behavior"]] += 1
        if "FAILED" in (r["behavior"], r["behaviorClose"]):
            failed.append(case)
total = sum(counts.values())
print(f"autobahn: {backend}: {total} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
if failed:
    sys.exit(f"autobahn: {backend}: FAILED: {' '.join(sorted(failed, key=lambda c: [int(x) for x in c.split('.')]))}")
PY
done
exit $status
