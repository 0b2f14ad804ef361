#!/usr/bin/env bash
# agentwatch demo: run a scripted "agent" (demo/agent.sh) under agentwatch
# and show what its process tree did.
#
# The agent runs in a throwaway network namespace wired to a second one that
# plays "the internet" (198.18.0.1 / fd99::1, with listeners on :443 and
# :8080). Nothing is added to the host's own network: both namespaces, their
# veth pair and the listeners are removed on exit, even on failure.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: must run as root (try: sudo make demo)" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AW="$ROOT/.venv/bin/agentwatch"
PY="$ROOT/.venv/bin/python"
AGENT_SH="$ROOT/demo/agent.sh"
if [[ ! -x $AW ]]; then
    echo "demo: $AW not found (run: make setup)" >&2
    exit 2
fi
for tool in ip socat; do
    command -v "$tool" >/dev/null || { echo "demo: $tool not found (run: make setup)" >&2; exit 2; }
done
if [[ ! -x /usr/bin/python3 ]]; then
    echo "demo: /usr/bin/python3 not found (demo/agent.sh needs it)" >&2
    exit 2
fi

# A short PATH, so the table is not padded with the failed execs of a PATH
# search (agentwatch shows those too: try `agentwatch run -- sh -c true`).
export PATH=/usr/bin:/bin:/usr/sbin:/sbin

say() { echo "demo: $*"; }

NS_AGENT="aw-demo-agent-$$"
NS_NET="aw-demo-net-$$"
CREATED=()     # namespaces this run created (and so deletes)
LISTENERS=()
JSON=""

cleanup() {
    local rc=$? pid ns left other
    trap - EXIT INT TERM HUP
    set +e
    for pid in "${LISTENERS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${LISTENERS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    for ns in "${CREATED[@]}"; do
        # Kill anything still inside (a slow detached agent process), then the netns;
        # deleting a netns also deletes its end of the veth pair and so the peer.
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
        ip netns del "$ns"
    done
    [[ -n $JSON ]] && rm -f "$JSON"
    left=$(ip netns list | awk -v ours="${CREATED[*]}" 'BEGIN {split(ours, o, " "); for (i in o) mine[o[i]]} $1 in mine {print $1}')
    if [[ -n $left ]]; then
        echo "demo: WARNING: could not delete ${left//$'\n'/ } (try: ip netns del NAME)" >&2
        [[ $rc -eq 0 ]] && rc=1
    else
        say "cleaned up (namespaces, veth pair and listeners removed)"
    fi
    other=$(ip netns list | awk '/^aw-demo-/ {print $1}')
    if [[ -n $other ]]; then
        say "note: other demo namespaces exist (another demo running, or one killed with -9): ${other//$'\n'/ }"
    fi
    case $rc in
        0) ;;
        130|143|129) echo "demo: interrupted" >&2 ;;
        *) echo "demo: FAILED (exit $rc)" >&2 ;;
    esac
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- a two-namespace network ----------------------------------------------
say "setting up network namespaces $NS_AGENT (agent) <-> $NS_NET (fake internet)"
ip netns add "$NS_AGENT"
CREATED+=("$NS_AGENT")
ip netns add "$NS_NET"
CREATED+=("$NS_NET")
# Create the veth pair inside the namespaces: it never exists in the host's.
ip -n "$NS_AGENT" link add veth-agent type veth peer name veth-net netns "$NS_NET"
ip -n "$NS_AGENT" addr add 198.18.0.2/24 dev veth-agent
ip -n "$NS_AGENT" addr add fd99::2/64 dev veth-agent nodad
ip -n "$NS_NET" addr add 198.18.0.1/24 dev veth-net
ip -n "$NS_NET" addr add fd99::1/64 dev veth-net nodad
for ns in "$NS_AGENT" "$NS_NET"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_AGENT" link set veth-agent up
ip -n "$NS_NET" link set veth-net up
ip -n "$NS_AGENT" route add default via 198.18.0.1

# --- listeners in the fake internet -----------------------------------------
ip netns exec "$NS_NET" socat TCP4-LISTEN:443,bind=198.18.0.1,fork,reuseaddr \
    SYSTEM:'echo hello from port 443' &
LISTENERS+=($!)
ip netns exec "$NS_NET" socat 'TCP6-LISTEN:8080,bind=[fd99::1],fork,reuseaddr' \
    SYSTEM:'echo hello over IPv6 from port 8080' &
LISTENERS+=($!)
for _ in $(seq 50); do
    ports=$(ip netns exec "$NS_NET" ss -Htln 2>/dev/null || true)
    [[ $ports == *198.18.0.1:443* && $ports == *"[fd99::1]:8080"* ]] && break
    kill -0 "${LISTENERS[@]}" 2>/dev/null || break   # a listener died: socat said why
    sleep 0.1
done
if [[ $ports != *198.18.0.1:443* || $ports != *"[fd99::1]:8080"* ]]; then
    echo "demo: listeners did not start in $NS_NET" >&2
    exit 1
fi
say "listening on 198.18.0.1:443 and [fd99::1]:8080 (inside $NS_NET)"

AGENT_CMD=("$(command -v ip)" netns exec "$NS_AGENT" /bin/sh "$AGENT_SH")
LABELS=(--label demo=walking-skeleton --label task=demo-1)

# --- 1. the live table --------------------------------------------------------
echo
say "1/2 running the agent under agentwatch, live table:"
say "    agentwatch run --format table ${LABELS[*]} -- ${AGENT_CMD[*]}"
echo
rc=0
"$AW" run --format table "${LABELS[@]}" -- "${AGENT_CMD[@]}" || rc=$?
echo
say "agentwatch exited with $rc (the agent's own exit code)"
if [[ $rc -ne 0 ]]; then
    echo "demo: expected exit code 0" >&2
    exit 1
fi

# --- 2. JSON lines, summarised ----------------------------------------------
JSON=$(mktemp /tmp/aw-demo-XXXXXX.jsonl)
echo
say "2/2 same agent again, JSON lines to a file (--format json --output FILE), summary:"
rc=0
"$AW" run --format json --output "$JSON" "${LABELS[@]}" -- "${AGENT_CMD[@]}" >/dev/null || rc=$?
if [[ $rc -ne 0 ]]; then
    echo "demo: agentwatch exited with $rc (expected 0)" >&2
    exit 1
fi
"$PY" - "$JSON" <<'EOF'
import collections, json, sys

records = [json.loads(line) for line in open(sys.argv[1], "rb")]
events = [r for r in records if r.get("kind") == "event"]
types = collections.Counter(r["type"] for r in events)
agents = sorted({r["agent"]["id"] for r in records if r.get("agent")})
connects = []
for r in events:
    if r["type"] == "connect":
        n = r["network"]
        host = f"[{n['daddr']}]" if ":" in n["daddr"] else n["daddr"]
        connects.append(f"{n['protocol']} {host}:{n['dport']} {n['result']}")

print(f"  events:   {len(events)} ({', '.join(f'{t} {c}' for t, c in sorted(types.items()))})")
print(f"  agents:   {', '.join(agents) or 'none'}")
print(f"  connects: {'; '.join(connects) or 'none'}")

problems = []
if len(agents) != 1:
    problems.append(f"expected exactly one agent id, got {len(agents)}")
expected = ["tcp 198.18.0.1:443 ok", "udp 198.18.0.1:53 ok",
            "tcp 198.18.0.1:9 ECONNREFUSED", "tcp [fd99::1]:8080 ok"]
problems += [f"missing connect: {c}" for c in expected if c not in connects]
if types.get("lost"):
    problems.append("the kernel lost events (see the lost records)")
stray = [r for r in events if r["type"] != "lost" and not r.get("agent")]
if stray:
    problems.append(f"{len(stray)} events without an agent")
if not any(r["type"] == "exec" and r["process"]["argv"] == ["/bin/true", "detached"]
           for r in events if r.get("agent")):
    problems.append("missing the detached grandchild's exec (/bin/true detached)")
for p in problems:
    print(f"demo: PROBLEM: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
