#!/usr/bin/env bash
# Start or stop a one-machine Ray cluster on 127.0.0.1, for `ray job submit` and `serve deploy` on a laptop.
#   cluster/local_head.sh start [extra `ray start` flags]   # e.g. --num-cpus 2 --num-gpus 1
#   cluster/local_head.sh stop
# Every Ray command that talks to it must see the same two variables (README: "Ray on one machine").
set -euo pipefail
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
case "${1:-}" in
  start)
    shift
    ray start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 --disable-usage-stats "$@"
    echo "submit jobs with: RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- python -m ..."
    ;;
  stop)
    ray stop
    ;;
  *)
    echo "usage: $0 start [ray start flags] | stop" >&2
    exit 2
    ;;
esac
