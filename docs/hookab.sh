#!/usr/bin/env bash
# A/B of the per-hook cost (bpf stats run_time_ns / run_cnt) of two wgo builds, interleaved.
# usage: hookab.sh WGO_A WGO_B PEER ROUNDS
set -euo pipefail
A=$1; B=$2; PEER=$3; ROUNDS=${4:-5}
CG2=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)
CG=$CG2/wgo-hookab; mkdir -p $CG
ip netns add hookab 2>/dev/null || true
ip -n hookab link set lo up
cleanup() { pkill -f "udp-echo --bind 127.0.0.1:7999" || true; sleep 0.3; ip netns del hookab || true; rmdir $CG 2>/dev/null || true; sysctl -qw kernel.bpf_stats_enabled=0; }
trap cleanup EXIT
sh -c "echo \$\$ > $CG/cgroup.procs && exec nsenter --net=/run/netns/hookab $PEER udp-echo --bind 127.0.0.1:7999" >/dev/null 2>&1 &
sleep 0.5
rr() { sh -c "echo \$\$ > $CG/cgroup.procs && exec nsenter --net=/run/netns/hookab $PEER udp-rr --to 127.0.0.1:7999 --duration $1 --size 64" ; }
rr 1 >/dev/null
stats() { # sum run_time_ns and run_cnt per attach type of the programs on the cgroup
  for id in $(bpftool cgroup show $CG -j | python3 -c 'import json,sys; [print(p["id"], p["attach_type"]) for p in json.load(sys.stdin)]' | awk '{print $1":"$2}'); do
    pid=${id%%:*}; at=${id#*:}
    bpftool prog show id $pid -j | python3 -c "import json,sys; v=json.load(sys.stdin); print('$at', v.get('run_time_ns',0), v.get('run_cnt',0))"
  done
}
for r in $(seq 1 $ROUNDS); do
  for which in A B; do
    bin=$A; [ $which = B ] && bin=$B
    $bin record --node hk --cgroup $CG --out /tmp/hookab.pcapng >/dev/null 2>/tmp/hookab-rec.log &
    rec=$!
    for i in $(seq 1 50); do [ -n "$(bpftool cgroup show $CG 2>/dev/null | tail -n +2)" ] && break; sleep 0.1; done
    sleep 0.3
    sysctl -qw kernel.bpf_stats_enabled=1
    s0=$(stats); rr 2 >/dev/null; s1=$(stats)
    sysctl -qw kernel.bpf_stats_enabled=0
    kill -INT $rec; wait $rec || true
    python3 - "$which" "$r" "$s0" "$s1" <<'PY'
import sys
w, r, s0, s1 = sys.argv[1:5]
def parse(s):
    d={}
    for l in s.strip().splitlines():
        at,t,c=l.split(); d.setdefault(at,[0,0]); d[at][0]+=int(t); d[at][1]+=int(c)
    return d
a,b=parse(s0),parse(s1)
print(w, r, ' '.join(f"{k}={(b[k][0]-a[k][0])/max(1,b[k][1]-a[k][1]):.0f}ns/{b[k][1]-a[k][1]}" for k in sorted(b)))
PY
  done
done
