"""Format the grid's results as one plain-text table.

Used by grid.py after a run; can also re-print a saved run:

    python table.py results.json

Cells that a system could not fill show 'n/a'; the reasons are listed under the table.
"""

import json
import sys

from common import size_label

SYSTEMS = ("averager", "gloo", "hivemind")
COLUMNS = (
    ("peers", 5),
    ("size", 5),
    ("compression", 11),
    ("averager MB/s", 13),
    ("gloo MB/s", 10),
    ("hivemind MB/s", 13),
    ("averager/gloo", 13),
    ("averager/hivemind", 17),
    ("averager peak RSS MB", 20),
)


def algbw(cell, system):
    """The system's algbw in MB/s for this cell, or None when it has no figure."""
    result = cell["results"].get(system)
    if not result or "algbw_mb_s" not in result:
        return None
    return result["algbw_mb_s"]


def peak_rss(cell):
    """The largest peak resident set of the averager's peers in MB (bench --processes), or None."""
    result = cell["results"].get("averager") or {}
    peaks = [p for p in result.get("peak_rss_mb") or [] if p is not None]
    return max(peaks) if peaks else None


def ratio(numerator, denominator):
    """numerator / denominator, or None if either is missing."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def format_table(results):
    """The table for results (the dict grid.py writes to results.json), as a string."""

    def show(value, fmt, ran=True):
        if not ran:
            return "-"  # the system was left out of this run (--systems)
        return "n/a" if value is None else format(value, fmt)

    lines = ["  ".join(name.rjust(width) for name, width in COLUMNS)]
    reasons = []
    for cell in results["cells"]:
        figures = {system: algbw(cell, system) for system in SYSTEMS}
        ran = {system: system in cell["results"] for system in SYSTEMS}
        row = (
            str(cell["peers"]),
            size_label(cell["floats"]),
            cell["compression"],
            show(figures["averager"], ".1f", ran["averager"]),
            show(figures["gloo"], ".1f", ran["gloo"]),
            show(figures["hivemind"], ".1f", ran["hivemind"]),
            show(ratio(figures["averager"], figures["gloo"]), ".2f", ran["averager"] and ran["gloo"]),
            show(ratio(figures["averager"], figures["hivemind"]), ".2f", ran["averager"] and ran["hivemind"]),
            show(peak_rss(cell), ".1f", ran["averager"]),
        )
        lines.append("  ".join(text.rjust(width) for text, (_, width) in zip(row, COLUMNS)))
        for system in SYSTEMS:
            result = cell["results"].get(system)
            if result and "error" in result:
                key = f"{cell['peers']} x {size_label(cell['floats'])} x {cell['compression']}"
                reasons.append(f"  {system} @ {key}: {result['error']}")
    lines.append("")
    lines.append("algbw per peer = floats * 4 B / median all-reduce seconds, MB = 10^6 B (see bench/README.md)")
    if reasons:
        lines.append("n/a:")
        lines.extend(reasons)
    return "\n".join(lines)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "results.json"
    with open(path) as file:
        print(format_table(json.load(file)))


if __name__ == "__main__":
    main()
