"""The results as a text table, or as one JSON object."""

import json
import math


def format_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(report: dict) -> str:
    """Return one row per metric: scenario, metric, median, min, max, unit; then targets and notes."""
    rows = [("scenario", "metric", "median", "min", "max", "unit")]
    for name, scenario in report["scenarios"].items():
        if scenario["status"] != "ok":
            rows.append((name, f"{scenario['status']}: {scenario['reason']}", "", "", "", ""))
            continue
        for metric, summary in scenario["metrics"].items():
            rows.append((name, metric, format_number(summary["median"]), format_number(summary["min"]),
                         format_number(summary["max"]), summary["unit"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) if i < 2 or i == 5 else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))

    lines.append("")
    lines.append("Targets (median of the rounds):")
    for name, scenario in report["scenarios"].items():
        for target in scenario.get("targets", []):
            verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
            value = scenario["metrics"].get(target["metric"], {}).get("median")
            lines.append(f"  {name}: {target['description']}: {verdict} ({target['metric']} = {format_number(value)})")
    lines.append("")
    for name, scenario in report["scenarios"].items():
        for system, reason in scenario.get("skipped", {}).items():
            lines.append(f"  {name}: {system} skipped: {reason}")
        for note in scenario.get("notes", []):
            lines.append(f"  {name}: {note}")
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    lines.append(f"  event loop of the poller and the bare app: {report['event_loop']}; "
                 f"load generator: {report['load_generator']}")
    return "\n".join(lines)


def format_json(report: dict) -> str:
    # NaN is not JSON; a figure that could not be measured is null.
    return json.dumps(replace_nan(report), indent=2, ensure_ascii=False)


def replace_nan(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: replace_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [replace_nan(item) for item in value]
    return value
