#!/usr/bin/env bash
# Run a long benchmark detached from the shell that starts it, and collect its results while it runs:
# for a GPU machine reached through calls shorter than the benchmark, where a call that is cut off
# must still bring back what has finished so far.
#
#   benchmarks/detached.sh start LOG CMD [ARG ...]     start CMD in its own session, output to LOG
#   benchmarks/detached.sh wait SECONDS DEST FILE ...  wait up to SECONDS while it runs, copying each
#                                                      FILE that exists into DEST every 30 s and at the end
#
# `wait` prints RUNNING or FINISHED (with CMD's exit status), then the last lines of LOG. The
# copies happen during the wait, so results that exist survive a caller that is killed mid-wait.
set -uo pipefail
state=${DETACHED_STATE:-/tmp/detached}
mkdir -p "$state"

running() { [[ -f $state/pid ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

collect() {
  local dest=$1; shift
  mkdir -p "$dest"
  for f in "$@"; do [[ -e $f ]] && cp -r "$f" "$dest/" 2>/dev/null; done
  [[ -f $state/log ]] && cp "$(cat "$state/log")" "$dest/" 2>/dev/null
  return 0
}

case ${1:-} in
  start)
    log=${2:?usage: detached.sh start LOG CMD [ARG ...]}; shift 2
    running && { echo "already running: pid $(cat "$state/pid")"; exit 1; }
    rm -f "$state/rc"
    echo "$log" >"$state/log"
    setsid nohup bash -c '"$@"; echo $? >'"$state/rc" _ "$@" >"$log" 2>&1 </dev/null &
    echo $! >"$state/pid"
    echo "started pid $! (log $log)"
    ;;
  wait)
    seconds=${2:?usage: detached.sh wait SECONDS DEST FILE ...}; dest=${3:?}; shift 3
    end=$((SECONDS + seconds))
    while running && ((SECONDS < end)); do
      collect "$dest" "$@"
      sleep $((end - SECONDS < 30 ? (end - SECONDS > 0 ? end - SECONDS : 1) : 30))
    done
    collect "$dest" "$@"
    if running; then echo RUNNING; else echo "FINISHED (exit $(cat "$state/rc" 2>/dev/null || echo '?'))"; fi
    [[ -f $state/log ]] && tail -c 2000 "$(cat "$state/log")" | tr '\r' '\n' | grep -v '^\s*$' | tail -5
    ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac
