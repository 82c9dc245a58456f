"""The advice of a comparison: one plain sentence that says only what the paired intervals support.

The rows are ranked by their mean; the best row is compared with every other, paired by seed (95 % t-interval). If
every interval lies above 0, the best row is ahead of every other row and the sentence says by how much (over the
next best, and over the student alone). Otherwise it says which rows beat the student alone beyond the noise (their
interval above 0), and that no row is ahead of the rest; or, when none beats it, that no method is ahead of the
student alone beyond the noise (every method's mean below it: the closest). With one seed there is no interval, and
the sentence says so.
"""

from __future__ import annotations

from collections.abc import Mapping

from .paired_statistics import PairedDifference, SeedValues, paired_difference, ranked, seeds_ahead_of_all

#: what narrows the intervals, said when they decide nothing
MORE_EVIDENCE = "more seeds (--seeds) or a larger --budget narrow the intervals"


def interval(difference: PairedDifference) -> str:
    """``+0.0700 [+0.0600, +0.0800]``: a paired difference and its 95 % t-interval."""
    return f"{difference.mean:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}]"


def listed(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def advice(rows: Mapping[str, SeedValues], labels: Mapping[str, str], control: str | None, metric: str) -> str:
    """One sentence on ``metric`` for rows ``{name: {seed: value}}`` (``labels``: their names in words; ``control``:
    the student alone's row, or None without one)."""
    def label(name: str) -> str:
        return labels.get(name, name)

    names = ranked(rows)
    if len(names) < 2:
        return "Fewer than two rows have results (the others' runs failed): nothing to compare."
    best, others = names[0], names[1:]
    versus = {other: paired_difference(rows[best], rows[other]) for other in others}
    if max(len(difference.deltas) for difference in versus.values()) < 2:
        return (f"One seed per row: no interval, so nothing can be concluded from these numbers ({label(best)} has the "
                f"best {metric}); run at least 3 seeds (--seeds 0 1 2).")
    if all(difference.above_zero for difference in versus.values()):
        return _clear_winner(rows, best, others, versus, control, label, metric)
    tied = [other for other in others if not versus[other].above_zero]
    lead = (f"{label(best)} has the best mean, but its paired difference to {label(tied[0])} is "
            f"{interval(versus[tied[0]])} {metric}, an interval that includes 0")
    if control is None:
        return f"No row is ahead of every other beyond the noise: {lead}; {MORE_EVIDENCE}."
    methods = [name for name in names if name != control]
    against = {name: paired_difference(rows[name], rows[control]) for name in methods}
    helping = [name for name in methods if against[name].above_zero]
    behind = [name for name in methods if against[name].below_zero]
    if not helping:
        top = methods[0]
        lead = (f"No method is ahead of {label(control)}: the closest, {label(top)}," if against[top].mean <= 0 else
                f"No method is ahead of {label(control)} beyond the noise: the best method, {label(top)},")
        text = (f"{lead} is {interval(against[top])} {metric} ({against[top].seeds_better}/{len(against[top].deltas)} "
                "seeds)")
        if behind:
            text += f", and {listed([label(name) for name in behind])} {'is' if len(behind) == 1 else 'are'} behind it"
        return f"{text}; {MORE_EVIDENCE}."
    gains = listed([f"{label(name)} ({interval(against[name])})" for name in helping])
    verb = "beats" if len(helping) == 1 else "beat"
    return f"{gains} {verb} {label(control)} on {metric}, but no row is ahead of every other: {lead}."


def _clear_winner(rows, best: str, others: list[str], versus: dict[str, PairedDifference], control: str | None,
                  label, metric: str) -> str:
    ahead, n = seeds_ahead_of_all(rows, best)
    runner = others[0]
    text = (f"{label(best)} is ahead of every other row on {ahead}/{n} seeds: {interval(versus[runner])} {metric} over "
            f"the next best ({label(runner)})")
    if control is None:
        return text + "."
    if best == control:
        return text + ": no method helps at this budget."
    text += f", {interval(versus[control])} over {label(control)}"
    methods = [name for name in others if name != control]
    against = {name: paired_difference(rows[name], rows[control]) for name in methods}
    helping = [label(name) for name in methods if against[name].above_zero]
    behind = [label(name) for name in methods if against[name].below_zero]
    noise = [label(name) for name in methods if not against[name].above_zero and not against[name].below_zero]
    parts = []
    if helping:
        parts.append(f"{listed(helping)} also {'beats' if len(helping) == 1 else 'beat'} {label(control)}")
    if noise:
        parts.append(f"{listed(noise)} {'is' if len(noise) == 1 else 'are'} inside the noise of {label(control)}")
    if behind:
        parts.append(f"{listed(behind)} {'is' if len(behind) == 1 else 'are'} behind it")
    return text + ("; " + ", ".join(parts) if parts else "") + "."


__all__ = ["advice", "interval"]
