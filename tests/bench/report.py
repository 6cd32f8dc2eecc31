"""The headline keys of bench-results.json, their targets, and the printed table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _m(d: dict[str, Any] | None) -> float | None:
    return None if not d else d.get("median")


def headline(r: dict[str, Any]) -> None:
    """Adds the issue's keys at the top level (medians) and a targets table."""
    t: dict[str, dict[str, Any]] = {}
    cap = r.get("capture")
    if cap:
        r["capture_overhead_ratio"] = _m(cap["ratio_by_clients"]["32"])
        t["capture_overhead_ratio"] = {"target": "<= 1.15", "value": r["capture_overhead_ratio"]}
    # issue 17: the realistic shipping transaction, and the worst case against its floor
    for part in (r.get("capture"), r.get("capture_realistic")):
        if not part:
            continue
        real = part.get("realistic")
        if real:
            r["capture_overhead_ratio_realistic"] = _m(real["ratio_by_clients"]["32"])
            t["capture_overhead_ratio_realistic"] = {
                "target": "<= 1.15 (32 clients)",
                "value": r["capture_overhead_ratio_realistic"],
            }
            inbox = real.get("ratio_inbox_by_clients")
            if inbox:  # no target: what a lean inbox row instead of the request row would give
                r["capture_overhead_ratio_realistic_inbox"] = _m(inbox["32"])
        pr = part.get("proposed_32") or {}
        gen, floor = _m(pr.get("ratio_generated")), _m(pr.get("ratio_inbox"))
        if gen and floor:
            r["capture_vs_floor"] = round(gen / floor, 3)
            t["capture_vs_floor"] = {
                "target": "<= 1.2 (generated trigger ratio / minimal inbox trigger ratio)",
                "value": r["capture_vs_floor"],
            }
    ins = r.get("capture_instructions")
    if ins and "trigger_instructions" in ins:
        # deterministic (callgrind): the trigger's server instructions per captured order
        r["capture_trigger_instructions"] = ins["trigger_instructions"]["generated"]
        r["capture_trigger_instructions_inbox"] = ins["trigger_instructions"]["inbox"]
    e2e = r.get("e2e")
    if e2e:
        at = e2e["latency_20ms"]
        r["e2e_invoices_per_s"] = _m(at["daemon"]["invoices_per_s"])
        r["peer_invoices_per_s"] = {p: _m(at[p]["invoices_per_s"]) for p in at if p != "daemon"}
        best = max(v or 0 for v in r["peer_invoices_per_s"].values())
        r["ratio_vs_best_peer"] = round(r["e2e_invoices_per_s"] / best, 2) if best else None
        r["daemon_cpu_ms_per_invoice"] = _m(at["daemon"]["cpu_ms_per_invoice"])
        r["peer_cpu_ms_per_invoice"] = {
            p: _m(at[p]["cpu_ms_per_invoice"]) for p in at if p != "daemon"
        }
        best_cpu = min(v or 1e9 for v in r["peer_cpu_ms_per_invoice"].values())
        r["cpu_ratio_vs_best_peer"] = round(r["daemon_cpu_ms_per_invoice"] / best_cpu, 2)
        z = e2e["latency_0ms"]
        r["e2e_invoices_per_s_0ms"] = _m(z["daemon"]["invoices_per_s"])
        r["peer_invoices_per_s_0ms"] = {p: _m(z[p]["invoices_per_s"]) for p in z if p != "daemon"}
        rss = [_m(at["daemon"]["peak_rss_mb"]), _m(z["daemon"]["peak_rss_mb"])]
        r["daemon_rss_mb"] = max(v for v in rss if v is not None)
        t["ratio_vs_best_peer"] = {"target": ">= 2.0", "value": r["ratio_vs_best_peer"]}
        t["cpu_ratio_vs_best_peer"] = {
            "target": "<= 0.5 (daemon CPU/invoice vs the best peer's)",
            "value": r["cpu_ratio_vs_best_peer"],
        }
        t["daemon_rss_mb"] = {"target": "<= 150", "value": r["daemon_rss_mb"]}
    lat = r.get("latency")
    if lat:
        r["latency_p50_ms"] = lat["p50_ms"]
        r["latency_p99_ms"] = lat["p99_ms"]
        t["latency_p99_ms"] = {
            "target": f"<= {lat['target_p99_ms']} (2 x 20 ms + 200 ms issue delay + 50 ms)",
            "value": lat["p99_ms"],
        }
    sc = r.get("scale")
    if sc:
        r["two_daemons_ratio"] = _m(sc["ratio"])
        r["sandbox_capacity_per_s"] = sc["sandbox_alone"].get("capacity_estimate_per_s")
        t["two_daemons_ratio"] = {"target": ">= 1.6", "value": r["two_daemons_ratio"]}
        rss2 = _m(sc["two_daemons"]["peak_rss_mb"])
        if rss2 is not None:
            r["daemon_rss_mb"] = max(r.get("daemon_rss_mb") or 0, rss2)
    cl = r.get("claim")
    if cl:
        r["claim_cost_end_vs_start"] = cl["end_vs_start"]
        t["claim_cost_end_vs_start"] = {"target": "flat (~1.0)", "value": cl["end_vs_start"]}
    for v in t.values():
        v["met"] = _met(v["target"], v["value"])
    r["targets"] = t


def _met(target: str, value: Any) -> bool | None:
    if value is None:
        return None
    parts = target.split()
    try:
        bound = float(parts[1])
    except (IndexError, ValueError):
        return bool(float(value) <= 1.5) if target.startswith("flat") else None
    return bool(value <= bound) if parts[0] == "<=" else bool(value >= bound)


def _fmt(s: dict[str, Any] | None, unit: str = "") -> str:
    if not s or s.get("median") is None:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    if len(s.get("runs", [])) <= 1:
        return f"{med:g}{unit}"
    return f"{med:g}{unit} ({lo:g}..{hi:g})"


def print_table(r: dict[str, Any]) -> None:
    console = Console(width=160)
    m = r["meta"]
    mc = m["machine"]
    console.print(
        f"[bold]{m['command']}[/]: {mc['nproc']} x {mc['cpu_model']}, "
        f"PostgreSQL {m['postgresql']['version']} ({m['postgresql']['server']}), "
        f"load {mc['loadavg_at_start']} -> {m.get('loadavg_at_end')}, {m.get('seconds')} s"
    )
    tab = Table("figure", "median (min..max)", "target", "met", title="cdc-invoice bench")
    cap = r.get("capture")
    if cap:
        for c in ("1", "8", "32"):
            tab.add_row(
                f"capture TPS {c:>2} clients: none / plugin",
                f"{_fmt(cap['tps']['none'][c])} / {_fmt(cap['tps']['plugin'][c])}",
                "",
                "",
            )
            tab.add_row(
                f"  overhead ratio, {c} client(s)", _fmt(cap["ratio_by_clients"][c]), "", ""
            )
        tab.add_row(
            "  ratio 32 clients, sync_commit=off",
            _fmt(cap["ratio_32_sync_commit_off"]),
            "",
            "",
        )
        pr = cap.get("proposed_32")
        if pr:
            tab.add_row(
                "  ratio 32 clients: generated / v2 jsonb / proposed / inbox",
                " / ".join(
                    _fmt(pr.get(f"ratio_{k}"))
                    for k in ("generated", "jsonb_snapshot", "proposed", "inbox")
                ),
                "",
                "",
            )
        real = cap.get("realistic")
        if real:
            for c in ("1", "8", "32"):
                tab.add_row(
                    f"  realistic shipping transaction, {c} client(s): none / plugin (ratio)",
                    f"{_fmt(real['tps']['none'][c])} / {_fmt(real['tps']['plugin'][c])} "
                    f"({_fmt(real['ratio_by_clients'][c])})",
                    "",
                    "",
                )
        prof = cap.get("profile")
        if prof:
            tab.add_row(
                "  trigger µs/commit (min): generated / current / v2 jsonb / proposed / inbox",
                " / ".join(
                    str(prof.get("trigger_us_min", {}).get(k))
                    for k in ("generated", "current", "jsonb_snapshot", "proposed", "inbox")
                ),
                "",
                "",
            )
    e2e = r.get("e2e")
    if e2e:
        for lat in ("20", "0"):
            at = e2e[f"latency_{lat}ms"]
            for who, s in at.items():
                tab.add_row(
                    f"drain {e2e['n']} @{lat}ms {who} c={e2e['sweep_20ms']['chosen'][who]}",
                    f"{_fmt(s['invoices_per_s'], '/s')}, {_fmt(s['cpu_ms_per_invoice'], ' ms CPU')}",
                    "",
                    "",
                )
    sc = r.get("scale")
    if sc:
        tab.add_row(
            "two daemons vs one (0 ms)",
            f"{_fmt(sc['two_daemons']['invoices_per_s'], '/s')} vs "
            f"{_fmt(sc['one_daemon']['invoices_per_s'], '/s')}",
            "",
            "",
        )
        sa = sc["sandbox_alone"]
        tab.add_row(
            "sandbox alone (2 load generators)",
            f"{sa['invoices_per_s']:.0f}/s at {sa['sandbox_cpu_util']:.0%} of a core; "
            f"CPU-bound capacity ~{sa['capacity_estimate_per_s']:.0f}/s",
            "",
            "",
        )
    lat_r = r.get("latency")
    if lat_r:
        tab.add_row(
            f"latency at {lat_r['rate']}/s (20 ms platform)",
            f"p50 {lat_r['p50_ms']} ms, p90 {lat_r['p90_ms']} ms, p99 {lat_r['p99_ms']} ms",
            "",
            "",
        )
    cl = r.get("claim")
    if cl:
        tab.add_row(
            f"claim of 200 over a {cl['backlog']} backlog: start / end",
            f"{cl['claim_ms_start']} ms / {cl['claim_ms_end']} ms",
            "",
            "",
        )
    tab.add_section()
    for k, v in r.get("targets", {}).items():
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[v["met"]]
        tab.add_row(k, str(v["value"]), v["target"], met)
    console.print(tab)


def markdown(r: dict[str, Any]) -> str:
    """The results as a Markdown table (docs/benchmarks.md is written from this)."""
    rows: list[tuple[str, str]] = []
    cap = r.get("capture")
    if cap:
        for c in ("1", "8", "32"):
            rows.append(
                (
                    f"capture TPS, {c} clients: none / plugin (ratio)",
                    f"{_fmt(cap['tps']['none'][c])} / {_fmt(cap['tps']['plugin'][c])} "
                    f"({_fmt(cap['ratio_by_clients'][c])})",
                )
            )
        rows.append(
            ("capture ratio, 32 clients, sync_commit=off", _fmt(cap["ratio_32_sync_commit_off"]))
        )
        pr = cap.get("proposed_32")
        if pr:
            rows.append(
                (
                    "capture ratio, 32 clients: generated / v2 jsonb / proposed / inbox function",
                    " / ".join(
                        _fmt(pr.get(f"ratio_{k}"))
                        for k in ("generated", "jsonb_snapshot", "proposed", "inbox")
                    ),
                )
            )
        real = cap.get("realistic")
        if real:
            for c in ("1", "8", "32"):
                rows.append(
                    (
                        f"capture, realistic shipping transaction, {c} clients: none / plugin "
                        "(ratio)",
                        f"{_fmt(real['tps']['none'][c])} / {_fmt(real['tps']['plugin'][c])} "
                        f"({_fmt(real['ratio_by_clients'][c])})",
                    )
                )
        prof = cap.get("profile")
        if prof:
            rows.append(
                (
                    "trigger server µs per commit (min): generated / current / v2 jsonb / proposed / "
                    "inbox",
                    " / ".join(
                        str(prof.get("trigger_us_min", {}).get(k))
                        for k in ("generated", "current", "jsonb_snapshot", "proposed", "inbox")
                    ),
                )
            )
    e2e = r.get("e2e")
    if e2e:
        for lat in ("20", "0"):
            for who, s in e2e[f"latency_{lat}ms"].items():
                rows.append(
                    (
                        f"drain {e2e['n']} @ {lat} ms: {who} (c={e2e['sweep_20ms']['chosen'][who]})",
                        f"{_fmt(s['invoices_per_s'], '/s')}; {_fmt(s['cpu_ms_per_invoice'], ' ms')} CPU"
                        f"/invoice; first invoice after {_fmt(s.get('first_invoice_s'), ' s')}",
                    )
                )
    sc = r.get("scale")
    if sc:
        rows.append(
            (
                f"{sc['n']} orders @ 0 ms: two daemons vs one",
                f"{_fmt(sc['two_daemons']['invoices_per_s'], '/s')} vs "
                f"{_fmt(sc['one_daemon']['invoices_per_s'], '/s')}",
            )
        )
        sa = sc["sandbox_alone"]
        rows.append(
            (
                "sandbox alone (2 load generators)",
                f"{sa['invoices_per_s']:.0f}/s at {sa['sandbox_cpu_util']:.0%} of a core, "
                f"{sa['sandbox_cpu_ms_per_invoice']} ms CPU/invoice: capacity "
                f"~{sa['capacity_estimate_per_s']:.0f}/s",
            )
        )
    lat_r = r.get("latency")
    if lat_r:
        rows.append(
            (
                f"latency at {lat_r['rate']}/s, 20 ms platform",
                f"p50 {lat_r['p50_ms']} ms, p90 {lat_r['p90_ms']} ms, p99 {lat_r['p99_ms']} ms, "
                f"max {lat_r['max_ms']} ms",
            )
        )
    cl = r.get("claim")
    if cl:
        rows.append(
            (
                f"claim of 200 over a {cl['backlog']:,} backlog: start / end / max",
                f"{cl['claim_ms_start']} / {cl['claim_ms_end']} / {cl['claim_ms_max']} ms "
                f"({cl['requests_per_s_db_only']:.0f} requests/s through the queries alone)",
            )
        )
    out = ["| figure | median (min..max) |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in rows]
    out += ["", "| key | value | target | met |", "|---|---|---|---|"]
    for k, v in r.get("targets", {}).items():
        met = {True: "yes", False: "**no**", None: "-"}[v["met"]]
        out.append(f"| `{k}` | {v['value']} | {v['target']} | {met} |")
    return "\n".join(out)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    print(markdown(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
