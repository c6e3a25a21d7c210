"""The run's summary: one row per figure (ours, its baseline, the ratio, the
goal), printed as a Markdown table and drawn as a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Row = dict[str, Any]


def row(bench: str, what: str, ours: float | None, baseline: float | None, unit: str,
         goal: str, met: bool | None, ratio: float | None = None) -> Row:
    if ratio is None and ours is not None and baseline:
        ratio = round(ours / baseline, 3)
    return {"benchmark": bench, "what": what, "ours": ours, "baseline": baseline, "unit": unit,
            "ratio": ratio, "goal": goal, "met": met}


def rows(results: dict) -> list[Row]:
    b = results["benchmarks"]
    out: list[Row] = []
    if "pages" in b:
        p = b["pages"]
        for name in ("catalog", "product"):
            out.append(row("1 pages", f"{name} req/s (p50 {p[name]['p50_ms']} ms, p99 {p[name]['p99_ms']} ms)",
                            p[name]["requests_per_s"], p["hello"]["requests_per_s"], "req/s", "ratio ≥ 0.6",
                            p[name]["ratio"] >= 0.6))
        if "catalog_uncached" in p:
            u = p["catalog_uncached"]
            out.append(row("1 pages", f"catalog from the app, page cache bypassed by a session cookie req/s "
                           f"(p50 {u['p50_ms']} ms, p99 {u['p99_ms']} ms)",
                           u["requests_per_s"], p["hello"]["requests_per_s"], "req/s", "-", None))
        if "cache_checks" in p:
            failed = [name for name, ok in p["cache_checks"].items() if not ok]
            out.append(row("1 pages", "page cache: anonymous pages shared; session, token, Set-Cookie never"
                           + (f" (failed: {'; '.join(failed)})" if failed else ""),
                           float(not failed), 1.0, "bool", "yes", not failed))
    if "webhooks" in b:
        w = b["webhooks"]
        once, x3 = w["once"], w["x3"]
        out.append(row("2 webhooks", f"distinct events/s (p99 {once['p99_ms']} ms) vs the same POSTs to hello",
                       once["events_per_s"], w["hello"]["requests_per_s"], "events/s", "≥ 300 events/s",
                       once["events_per_s"] >= 300))
        out.append(row("2 webhooks", f"each event 3× concurrently: deliveries/s (p99 {x3['p99_ms']} ms)",
                        x3["requests_per_s"], None, "req/s", "-", None))
        if "host_cpu_ms_per_event" in once:
            out.append(row("2 webhooks", "sandbox host CPU per distinct event (idle CPU taken off)",
                            once["host_cpu_ms_per_event"], None, "ms", "-", None))
        exact = once["fulfilment"]["exactly_once"] and x3["fulfilment"]["exactly_once"]
        out.append(row("2 webhooks", "every order fulfilled exactly once (DB)", float(exact), 1.0, "bool",
                        "yes", exact))
    if "downloads" in b:
        d = b["downloads"]
        out.append(row("3 downloads", f"{d['file_mb']} MB via X-Accel-Redirect vs nginx direct",
                        round(d["accel"]["bytes_per_s"] / 1e6, 1), round(d["direct"]["bytes_per_s"] / 1e6, 1),
                        "MB/s", "ratio ≥ 0.8", d["ratio"] >= 0.8, d["ratio"]))
        small, large = sorted(d["cpu"], key=lambda k: int(k.removesuffix("mb")))
        out.append(row("3 downloads", f"app CPU per download, {large} vs {small} (idle CPU taken off)",
                        d["cpu"][large]["app_cpu_ms_per_download"], d["cpu"][small]["app_cpu_ms_per_download"],
                        "ms", "independent of size (ratio ≤ 1.5)", d["cpu_ratio_large_to_small"] <= 1.5,
                        d["cpu_ratio_large_to_small"]))
    if "releases" in b:
        r = b["releases"]
        for step in ("deploy", "rollback"):
            s = r[step]
            goal_s = "≤ 20 s, 0 failed" if step == "rollback" else "0 failed"
            met = s["failed"] == 0 and (step != "rollback" or (s["all_answers_s"] or 999) <= 20)
            out.append(row("4 releases", f"{step}: every answer from the target release after (s); playbook "
                           f"{s['playbook_seconds']} s; failed {s['failed']}/{s['requests']} at 50 req/s "
                           f"({s.get('retried_after_close', 0)} retried after a closed keep-alive)",
                            s["all_answers_s"], None, "s", goal_s, met))
    if "convergence" in b:
        c = b["convergence"]
        out.append(row("5 convergence", f"second site.yml: changed={c['changed']}", c["seconds"], 60,
                        "s", "changed=0, < 60 s", c["changed"] == 0 and c["seconds"] < 60))
    if "pages" in b:
        m = b["pages"]["memory_peak"]
        out.append(row("6 memory", "peak RSS of the active slot under page load", m["slot_rss_mb"], None, "MB",
                        "-", None))
        out.append(row("6 memory", "peak memory of the sandbox host (PSS summed)", m["host_pss_mb"], 4096, "MB",
                        "fits VPS M (4 GB)", m["host_pss_mb"] < 4096))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def markdown(table: list[Row], quick: bool) -> str:
    lines = ["| benchmark | what | ours | baseline | unit | ratio | goal | met |",
             "|---|---|---:|---:|---|---:|---|---|"]
    for r in table:
        met = "-" if r["met"] is None or quick else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['benchmark']} | {r['what']} | {_fmt(r['ours'])} | {_fmt(r['baseline'])} | {r['unit']} "
                     f"| {_fmt(r['ratio'])} | {r['goal']} | {met} |")
    return "\n".join(lines)


def chart(table: list[Row], path: Path, title: str) -> None:
    """Ours as a fraction of its baseline (or goal), the goal as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in table if r["ratio"] is not None and r["unit"] != "bool"]
    goals = {"ratio ≥ 0.6": 0.6, "ratio ≥ 0.8": 0.8, "changed=0, < 60 s": 1.0,
             "independent of size (ratio ≤ 1.5)": 1.5, "fits VPS M (4 GB)": 1.0}
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(shown) + 1.5))
    labels = [f"{r['benchmark']}: {r['what'].split(' (')[0]}" for r in shown]
    colours = ["tab:gray" if r["met"] is None else "tab:green" if r["met"] else "tab:red" for r in shown]
    ax.barh(range(len(shown)), [r["ratio"] for r in shown], color=colours)
    for i, r in enumerate(shown):
        if r["goal"] in goals:
            ax.plot([goals[r["goal"]]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.text(r["ratio"], i, f" {r['ratio']:.2f}", va="center")
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ours ÷ baseline (or goal); black tick: the goal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
