"""The human-readable ``mmcl ensemble`` report (tabulate tables) from the results dict."""

from __future__ import annotations

from typing import Any

SHOWN = 5  # classes listed as most fixed / most broken


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def render_report(results: dict[str, Any], per_class: bool = True) -> str:
    """The human-readable report: the accuracy table, weights, per-class table, fixes/breaks."""
    from tabulate import tabulate

    lines: list[str] = []
    head = (
        f"{len(results['streams'])} streams, {results['num_samples']:,} samples, "
        f"{results['num_classes']} classes; normalize: {results['normalize']}; "
        f"labels: {results['labels'] or 'none (fusion only, no accuracy)'}"
    )
    lines.append(head)
    lines += [f"Note: {note}" for note in results.get("notes", [])]
    dropped = {f: d for f, d in results["intersect"]["dropped"].items() if d}
    if dropped:
        lines.append("--intersect dropped: " + ", ".join(f"{d:,} from {f}" for f, d in dropped.items()))
    rows = []
    for st in results["streams"]:
        rows.append([st["name"], _pct(st.get("top1")), _pct(st.get("top5")), "single stream", ""])
    for en in results["ensembles"]:
        weights = en["weights_arg"] or "per fold (below)"
        rows.append([en["name"], _pct(en.get("top1")), _pct(en.get("top5")), en["protocol"], weights])
    lines += ["", tabulate(rows, headers=["stream / ensemble", "top-1 %", "top-5 %", "protocol", "weights"],
                           disable_numparse=True, colalign=("left", "right", "right", "left", "left"))]

    search = results.get("search")
    if search and search["protocol"] == "kfold":
        frows = [[str(r["fold"]), str(r["samples"]), _pct(r["search_top1"]), _pct(r["top1"]), r["weights_arg"]]
                 for r in search["fold_results"]]
        lines += ["", f"Cross-fitting ({search['folds']} folds, seed {search['seed']}): "
                  "weights searched on the other folds, top-1 on the fold itself",
                  tabulate(frows, headers=["fold", "samples", "top-1 % (search folds, in-sample)", "top-1 % (held-out fold)", "weights"],
                           disable_numparse=True, colalign=("right", "right", "right", "right", "left"))]
    elif search:
        lines += ["", f"Weights searched on the validation files {', '.join(search['validation_files'])}: "
                  f"their top-1 there is {_pct(search['validation_top1'])} % on "
                  f"{search['validation_samples']:,} samples (in-sample for the search)."]

    if results.get("weights_used"):
        lines += ["", f"Weights used ({results['final']}), to reuse: --weights {results['weights_used']}"]
    else:
        optimistic = [e for e in results["ensembles"] if e.get("optimistic")]
        lines += ["", f"Reported ensemble: {results['final']} (a different weight vector per fold)."]
        if optimistic:
            lines.append(
                "Weights searched on all test samples, for reuse on NEW data only "
                f"(their accuracy here is optimistic): --weights {optimistic[0]['weights_arg']}"
            )

    if per_class and results.get("per_class"):
        best = results["best_stream"]
        crow = []
        for r in results["per_class"]:
            label = f"{r['class']}" + (f" {r['name']}" if r.get("name") else "")
            delta = r["ensemble_top1"] - r["best_stream_top1"]
            crow.append([label, str(r["samples"]), _pct(r["best_stream_top1"]), _pct(r["ensemble_top1"]),
                         f"{100 * delta:+.2f}", str(r["fixed"]), str(r["broken"])])
        lines += ["", f"Per-class top-1: {results['final']} vs the best single stream ({best})",
                  tabulate(crow, headers=["class", "samples", f"{best} %", "ensemble %", "change", "fixed", "broken"],
                           disable_numparse=True, colalign=("left",) + ("right",) * 6)]
    if results.get("per_class") is not None:
        lines += ["", _fix_summary(results)]
    if results.get("out"):
        lines += ["", f"Fused scores written to {results['out']}"]
    return "\n".join(lines)


def _fix_summary(results: dict[str, Any]) -> str:
    rows = results["per_class"]

    def top(key: str) -> str:
        chosen = sorted((r for r in rows if r[key]), key=lambda r: -r[key])[:SHOWN]
        return ", ".join(f"{r['name'] or r['class']} ({r[key]})" for r in chosen) or "none"

    return (
        f"Against {results['best_stream']}, the ensemble fixes {results['fixed']:,} samples and breaks "
        f"{results['broken']:,} (net {results['fixed'] - results['broken']:+,}).\n"
        f"Most fixed classes: {top('fixed')}\nMost broken classes: {top('broken')}"
    )
