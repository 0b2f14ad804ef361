"""Summarise an agentwatch JSON-lines log of a GPU run (used by scripts/gpu-check.sh)."""

import collections
import json
import sys


def main(path: str) -> int:
    milestones, counters, nvml, alerts, lost = [], collections.Counter(), [], [], 0
    mem_bytes = collections.Counter()
    with open(path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "alert":
                alerts.append(rec)
                continue
            if rec.get("type") == "lost":
                lost += sum(rec["lost"].values())
            if rec.get("type") != "gpu":
                continue
            g, p = rec["gpu"], rec["process"]
            who = f"{p['comm']}[{p['pid']}]"
            if g["event"] == "milestone":
                milestones.append((rec["time"][11:23], who, g["milestone"], g["device"], g["op"], g.get("detail")))
            else:
                for name, n in g["ioctls"].items():
                    counters[(who, name)] += n
                mem_bytes[who] += g.get("mem_bytes", 0)
                if g.get("nvml"):
                    nvml.append((rec["time"][11:23], who, g["nvml"]))
    print("== milestones (first time each process reached each)")
    for m in milestones:
        print("  %s %-22s %-10s %-8s %-10s detail=%s" % m)
    print("== ioctl counters (whole run)")
    for (who, name), n in sorted(counters.items(), key=lambda x: -x[1]):
        print(f"  {who:22} {name:30} {n:7d}")
    for who, n in mem_bytes.items():
        if n:
            print(f"  {who:22} device memory allocated: {n / 2**20:.0f} MiB")
    print("== NVML per-process samples")
    for t, who, s in nvml:
        print(f"  {t} {who:22} sm_util={s.get('sm_util')}% mem={s.get('mem_bytes', 0) / 2**20:.0f} MiB gpus={s.get('gpus')}")
    if not nvml:
        print("  none (NVML absent, or no sample landed in the run)")
    print("== alerts")
    for a in alerts:
        print(f"  {a['severity']:8} {a['rule']:32} {a['message']}")
    if not alerts:
        print("  none")
    print(f"== lost events: {lost}")
    ok = any(m[2] == "compute" for m in milestones) and sum(counters.values()) > 0
    print("gpu-check:", "OK: compute milestone and counters seen" if ok else "FAILED: no compute milestone or no counters")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
