#!/bin/sh
# Starts (or stops) the demo lab: corral-lab runs in the background, holding
# the lab, until `make demo-stop` sends it SIGTERM and it tears it down.
set -eu
cd "$(dirname "$0")/.."
STATE=.lab
case "${1:-start}" in
start)
	mkdir -p "$STATE"
	if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
		echo "demo already running (pid $(cat "$STATE/pid")); stop it with: make demo-stop"
		exit 0
	fi
	rm -f "$STATE/ready"
	GOFLAGS=-tags=pacific setsid ./bin/corral-lab -state "$STATE" >"$STATE/demo.log" 2>&1 &
	echo $! >"$STATE/pid"
	echo "starting the demo lab (log: $STATE/demo.log)..."
	i=0
	while [ ! -f "$STATE/ready" ]; do
		if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
			cat "$STATE/demo.log"; echo "demo failed"; exit 1
		fi
		i=$((i + 1)); [ $i -gt 600 ] && { cat "$STATE/demo.log"; echo "demo timed out"; exit 1; }
		sleep 1
	done
	cat "$STATE/demo.log"
	cat <<MSG

The demo cluster is running. Use the CLI as root on a node:
  $STATE/corral-prod vm list          # cluster prod, on atlantis
  $STATE/corral-dev vm list           # cluster dev, on challenger
  $STATE/corral-prod cluster status
  $STATE/corral-prod vm console web   # detach with Ctrl-]
  $STATE/corral-houston cluster list  # the witness is in both clusters:
  $STATE/corral-houston --cluster dev cluster status   # name the one you mean
Stop everything with: make demo-stop
MSG
	;;
stop)
	if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
		kill -TERM "$(cat "$STATE/pid")"
		while kill -0 "$(cat "$STATE/pid")" 2>/dev/null; do sleep 0.2; done
		echo "demo stopped"
	else
		echo "no demo running"
	fi
	# The CLI wrappers point into the lab that is gone now.
	rm -f "$STATE/pid" "$STATE/ready" "$STATE"/corral-*
	;;
esac
