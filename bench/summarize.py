#!/usr/bin/python3
"""Turn bench/run.sh's results.tsv into one markdown table per scenario.

    summarize.py RESULTS.tsv [SCENARIO-INFO.tsv]

results.tsv columns (tab-separated, one line per run):
    scenario tool round rc wall user sys maxrss_kb server_cpu messages bytes
scenario-info.tsv columns: scenario description count bytes rtt_ms [limit]
(limit: "pipelined", the default, or "lockstep" for a server without
PIPELINING, where the limit reader sends one RETR at a time)

Per tool: medians over the rounds that succeeded (rc 0 and every message
delivered) of wall time, client CPU (user + sys, children included), peak
RSS (the largest process of the run, as wait4() reports it) and the Dovecot
CPU the session cost (pop3 + pop3-login processes). "popsync / tool" is
popsync's median wall time divided by the tool's: below 1 means popsync is
faster. The limit row is the server alone streaming the mailbox to a
minimal pipelined reader (bench/stream_limit.py), or on a server without
PIPELINING to a minimal reader that asks for one message at a time
(stream_limit.py --lockstep).
"""
import statistics
import sys
from collections import OrderedDict

ORDER = ["popsync", "popsync-plain", "mpop", "fetchmail", "getmail", "limit", "limit-scram"]
LABEL = {
    "popsync": "popsync",
    "popsync-plain": "popsync, `auth = [\"plain\"]`",
    "mpop": "mpop",
    "fetchmail": "fetchmail + procmail",
    "getmail": "getmail6",
    "limit": "**limit** (server streaming to a pipelined reader)",
    "limit-scram": "limit, logging in with SCRAM-SHA-256 (as popsync by default)",
}
LOCKSTEP_LABEL = "**limit** (lock-step reader, one RETR at a time)"


def fmt_s(x):
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def main():
    rows = []
    with open(sys.argv[1]) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 11 or p[0] == "scenario":
                continue
            rows.append(p)
    info = {}
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            for line in f:
                p = line.rstrip("\n").split("\t")
                if len(p) >= 5:
                    kind = p[5] if len(p) > 5 and p[5] else "pipelined"
                    info[p[0]] = (p[1], int(p[2]), int(p[3]), float(p[4]), kind)
    by = OrderedDict()
    for sc, tool, rnd, rc, wall, user, sys_, rss, scpu, msgs, nbytes in rows:
        by.setdefault(sc, OrderedDict()).setdefault(tool, []).append(
            dict(rc=int(rc), wall=float(wall), cpu=float(user) + float(sys_),
                 rss=int(rss), scpu=float(scpu), msgs=int(msgs), bytes=int(nbytes)))
    for sc, tools in by.items():
        desc, count, nbytes, rtt, kind = info.get(sc, (sc, None, None, 0.0, "pipelined"))
        print(f"### {sc}: {desc}\n")
        med = {}
        for tool, runs in tools.items():
            good = [r for r in runs if r["rc"] == 0 and (count is None or r["msgs"] == count)]
            if good:
                med[tool] = dict(
                    wall=statistics.median(r["wall"] for r in good),
                    cpu=statistics.median(r["cpu"] for r in good),
                    rss=statistics.median(r["rss"] for r in good),
                    scpu=statistics.median(r["scpu"] for r in good),
                    n=len(good), total=len(runs),
                    walls=sorted(r["wall"] for r in good))
            else:
                med[tool] = dict(n=0, total=len(runs))
        p = med.get("popsync")
        print("| tool | wall (median) | client CPU user+sys | peak RSS | server CPU | popsync / tool (wall) | popsync / tool (CPU) | rounds ok | wall, all rounds |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for tool in sorted(tools, key=lambda t: ORDER.index(t) if t in ORDER else 99):
            m = med[tool]
            label = LOCKSTEP_LABEL if tool == "limit" and kind == "lockstep" else LABEL.get(tool, tool)
            if tool == "limit-scram" and kind == "lockstep":
                label = "lock-step limit, logging in with SCRAM-SHA-256"
            if not m["n"]:
                print(f"| {label} | failed | | | | | | 0/{m['total']} | |")
                continue
            ratio = cratio = ""
            if p and p["n"] and tool != "popsync":
                ratio = f"{p['wall'] / m['wall']:.2f}×"
                if not tool.startswith("limit") and m["cpu"] > 0:
                    cratio = f"{p['cpu'] / m['cpu']:.2f}×"
            rss = f"{m['rss'] / 1024:.1f} MB"
            print(f"| {label} | {fmt_s(m['wall'])} | {m['cpu']:.2f} s | {rss} | "
                  f"{m['scpu']:.2f} s | {ratio} | {cratio} | {m['n']}/{m['total']} | "
                  f"{', '.join(f'{w:.2f}' for w in m['walls'])} |")
        if rtt:
            lim = med.get("limit")
            if kind == "lockstep" and count:
                trips = 6 + count
                what = f"TCP, TLS 1.3, greeting, AUTH, STAT, {count} RETRs one at a time, QUIT"
            else:
                trips = 7
                what = "TCP, TLS 1.3, greeting, AUTH, STAT, pipelined RETRs, QUIT"
            floor = trips * rtt / 1000.0
            line = (f"\nWire floor: {trips} round trips × {rtt:.0f} ms = {floor:.2f} s "
                    f"({what}) + transfer time")
            if lim and lim["n"]:
                line += f"; the measured limit above adds {lim['wall'] - floor:.2f} s for transfer and process start"
            print(line + ".")
        print()


if __name__ == "__main__":
    main()
