#!/usr/bin/env bash
# agentwatch demo: a scripted rogue agent (demo/agent.sh) opens a reverse SSH tunnel to a
# real sshd and starts a (fake) stratum miner; agentwatch says which agent and which
# process did it, live.
#
# The agent runs in a throwaway network namespace wired to a second one that plays "the
# internet" (198.18.0.1): a real OpenSSH server on :22 and a stratum pool on :3333, both
# with keys and files made for this run. A "remote user" there uses the tunnel once it is
# up. Nothing is added to the host's own network: the namespaces, their veth pair, every
# process started here and the temporary files are removed on exit, even on failure.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: must run as root (try: sudo make demo)" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AW="$ROOT/.venv/bin/agentwatch"
PY="$ROOT/.venv/bin/python"
if [[ ! -x $AW ]]; then
    echo "demo: $AW not found (run: make setup)" >&2
    exit 2
fi
for tool in ip ssh ssh-keygen /usr/sbin/sshd /usr/bin/python3; do
    command -v "$tool" >/dev/null || { echo "demo: $tool not found (run: make setup)" >&2; exit 2; }
done

# A short PATH, so the agent's execs are not padded with a PATH search.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin

say() { echo "demo: $*"; }

NS_AGENT="aw-demo-agent-$$"
NS_NET="aw-demo-net-$$"
NET_IP=198.18.0.1
CREATED=()     # namespaces this run created (and so deletes)
SERVICES=()    # background processes this script started
TMP=""

cleanup() {
    local rc=$? pid ns left other
    trap - EXIT INT TERM HUP
    set +e
    for pid in "${SERVICES[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${SERVICES[@]}"; do
        wait "$pid" 2>/dev/null
    done
    for ns in "${CREATED[@]}"; do
        # Kill anything still inside (the agent's detached tunnel), then the netns;
        # deleting a netns also deletes its end of the veth pair and so the peer.
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
        ip netns del "$ns"
    done
    [[ -n $TMP ]] && rm -rf "$TMP"
    left=$(ip netns list | awk -v ours="${CREATED[*]}" 'BEGIN {split(ours, o, " "); for (i in o) mine[o[i]]} $1 in mine {print $1}')
    if [[ -n $left ]]; then
        echo "demo: WARNING: could not delete ${left//$'\n'/ } (try: ip netns del NAME)" >&2
        [[ $rc -eq 0 ]] && rc=1
    else
        say "cleaned up (namespaces, veth pair, sshd, pool, tunnel and temporary keys removed)"
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

TMP=$(mktemp -d /tmp/aw-demo-XXXXXX)

# --- a two-namespace network ----------------------------------------------
say "setting up network namespaces $NS_AGENT (agent) <-> $NS_NET (fake internet)"
ip netns add "$NS_AGENT"
CREATED+=("$NS_AGENT")
ip netns add "$NS_NET"
CREATED+=("$NS_NET")
# Create the veth pair inside the namespaces: it never exists in the host's.
ip -n "$NS_AGENT" link add veth-agent type veth peer name veth-net netns "$NS_NET"
ip -n "$NS_AGENT" addr add 198.18.0.2/24 dev veth-agent
ip -n "$NS_NET" addr add "$NET_IP/24" dev veth-net
for ns in "$NS_AGENT" "$NS_NET"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_AGENT" link set veth-agent up
ip -n "$NS_NET" link set veth-net up
ip -n "$NS_AGENT" route add default via "$NET_IP"

# --- the fake internet: a real sshd and a stratum pool ------------------------
ssh-keygen -q -t ed25519 -N "" -f "$TMP/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$TMP/id_ed25519"
cp "$TMP/id_ed25519.pub" "$TMP/authorized_keys"
read -r ktype kdata _ < "$TMP/host_key.pub"
echo "$NET_IP $ktype $kdata" > "$TMP/known_hosts"
cat > "$TMP/sshd_config" <<EOF
ListenAddress $NET_IP:22
HostKey $TMP/host_key
AuthorizedKeysFile $TMP/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PidFile none
UseDNS no
AllowTcpForwarding yes
EOF
cat > "$TMP/ssh_config" <<EOF
Host *
  IdentityFile $TMP/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $TMP/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
  LogLevel ERROR
EOF
mkdir -p /run/sshd   # sshd's privilege separation directory (its service makes the same)
ip netns exec "$NS_NET" /usr/sbin/sshd -D -e -f "$TMP/sshd_config" 2>"$TMP/sshd.log" &
SERVICES+=($!)
ip netns exec "$NS_NET" /usr/bin/python3 "$ROOT/demo/stratum_server.py" --bind "$NET_IP" --port 3333 >/dev/null &
SERVICES+=($!)
# The agent's own notebook server on its loopback: what the tunnel exposes to the outside.
mkdir "$TMP/www"
echo "the agent's notebook server" > "$TMP/www/index.html"
ip netns exec "$NS_AGENT" /usr/bin/python3 -m http.server --bind 127.0.0.1 --directory "$TMP/www" 8888 \
    >/dev/null 2>&1 &
SERVICES+=($!)
# Someone outside who uses the tunnel as soon as it opens (sshd listens on their side).
ip netns exec "$NS_NET" /usr/bin/python3 -c '
import socket, time
while True:
    for port in (2222, 2223):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n"); s.recv(256)
        except OSError:
            pass
    time.sleep(0.2)' &
SERVICES+=($!)

for _ in $(seq 100); do
    net=$(ip netns exec "$NS_NET" ss -Htln 2>/dev/null || true)
    agent=$(ip netns exec "$NS_AGENT" ss -Htln 2>/dev/null || true)
    [[ $net == *"$NET_IP:22 "* && $net == *"$NET_IP:3333 "* && $agent == *"127.0.0.1:8888 "* ]] && break
    kill -0 "${SERVICES[@]}" 2>/dev/null || break   # a service died: it said why
    sleep 0.1
done
if [[ $net != *"$NET_IP:22 "* || $net != *"$NET_IP:3333 "* || $agent != *"127.0.0.1:8888 "* ]]; then
    echo "demo: services did not start (sshd log: $(cat "$TMP/sshd.log"))" >&2
    exit 1
fi
say "fake internet up: sshd on $NET_IP:22, stratum pool on $NET_IP:3333; the agent's notebook on 127.0.0.1:8888"

kill_agent_leftovers() {   # the tunnel the agent left behind, not our own services
    local pid
    for pid in $(ip netns pids "$NS_AGENT"); do
        [[ " ${SERVICES[*]} " == *" $pid "* ]] || kill -9 "$pid" 2>/dev/null || true
    done
}

LABELS=(--label task=demo-42 --label policy=rogue-v1)
run_agent() {   # run_agent REMOTE_PORT AGENTWATCH_OPTIONS...
    local port=$1
    shift
    "$AW" run --rules "$ROOT/rules" "${LABELS[@]}" --linger 2 "$@" \
        -- "$(command -v ip)" netns exec "$NS_AGENT" /bin/sh "$ROOT/demo/agent.sh" "$TMP/ssh_config" "$port"
}

# --- 1. the live alert table ----------------------------------------------------
echo
say "1/3 the rogue agent under agentwatch (default rules), live alerts:"
say "    agentwatch run --format table ${LABELS[*]} --linger 2 -- ip netns exec $NS_AGENT sh demo/agent.sh ..."
echo
rc=0
run_agent 2222 --format table || rc=$?
kill_agent_leftovers
echo
if [[ $rc -ne 0 ]]; then
    echo "demo: agentwatch exited with $rc (expected the agent's 0)" >&2
    exit 1
fi

# --- 2. the same as JSON alerts: who did it, and through which processes ------
JSON="$TMP/alerts.jsonl"
say "2/3 again with --format json --output FILE; each alert names the agent and the process ancestry:"
rc=0
run_agent 2223 --format json --output "$JSON" 2>/dev/null || rc=$?
kill_agent_leftovers
if [[ $rc -ne 0 ]]; then
    echo "demo: agentwatch exited with $rc (expected the agent's 0)" >&2
    exit 1
fi
"$PY" - "$JSON" <<'EOF'
import json, sys

alerts = [r for r in map(json.loads, open(sys.argv[1], "rb")) if r.get("kind") == "alert"]
seen = {}
for a in alerts:  # one line per rule and process, with a count
    key = (a["rule"], (a.get("process") or {}).get("pid"))
    seen.setdefault(key, [a, 0])[1] += 1
for a, n in seen.values():
    p = a.get("process")
    agent = a["agent"]
    labels = ",".join(f"{k}={v}" for k, v in sorted(agent["labels"].items()))
    times = f" x{n}" if n > 1 else ""
    print(f"  {a['severity'].upper():8} {a['rule'] + times:34} {','.join(a['mitre']):10} {agent['id']} [{labels}]")
    if p:
        chain = [p]
        for anc in p["ancestry"]:  # up to the agent's root process
            chain.append(anc)
            if anc["pid"] == agent["root_pid"]:
                break
        print("           " + " <- ".join(f"{x['comm']}({x['pid']})" for x in chain))

problems = []
agents = {a["agent"]["id"] for a in alerts}
if len(agents) != 1:
    problems.append(f"expected every alert from one agent, got {sorted(agents)}")
for rule in ("ssh-remote-forward", "reverse-tunnel-behaviour", "stratum-protocol"):
    if not any(a["rule"] == rule for a in alerts):
        problems.append(f"missing alert: {rule}")
for p in problems:
    print(f"demo: PROBLEM: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
echo
say "the tunnel and the miner were caught and attributed to the agent that started them"

# --- 3. contained: its own cgroup, the RL-sandbox egress policy in the kernel ------------
JSON3="$TMP/contained.jsonl"
echo
say "3/3 again with --contain (policies/rl-sandbox.yaml): the tunnel is refused in the kernel, the miner killed:"
say "    agentwatch run --contain ${LABELS[*]} -- ip netns exec $NS_AGENT sh demo/agent.sh ..."
rc=0
run_agent 2224 --contain --events --format json --output "$JSON3" 2>/dev/null || rc=$?
kill_agent_leftovers
"$PY" - "$JSON3" <<'EOF'
import json, os, sys

records = [json.loads(line) for line in open(sys.argv[1], "rb")]
alerts = [r for r in records if r.get("kind") == "alert"]
for a in alerts:
    if a["rule"] == "egress-policy" or a.get("action", "none") != "none":
        p = a["process"]
        what = f"{a['action']}: {a.get('action_result')}"
        if a.get("action_latency_s") is not None:
            what += f" {a['action_latency_s'] * 1000:.1f} ms after its first bytes"
        print(f"  {a['severity'].upper():8} {a['rule']:22} {p['comm']}({p['pid']}) -> "
              f"{a['network']['daddr']}:{a['network']['dport']}  [{what}]")
released = [r for r in records if r.get("status") == "containment_released"]
problems = []
if not any(a["rule"] == "egress-policy" and a["policy"]["rule"] == "outbound-ssh" for a in alerts):
    problems.append("the tunnel was not refused")
if not any(a["rule"] == "stratum-protocol" and a.get("action_result") == "killed" for a in alerts):
    problems.append("the miner was not killed")
if not released or not released[0]["cgroup"]["removed"] or os.path.exists(released[0]["cgroup"]["path"]):
    problems.append(f"the agent's cgroup was not removed: {released}")
else:
    print(f"  cgroup {released[0]['cgroup']['path']} removed; denials: {released[0]['denied']}")
for p in problems:
    print(f"demo: PROBLEM: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
echo
say "contained: the tunnel never left the namespace and the miner died as it logged in"
