#!/usr/bin/env python3
"""Issue 2's benchmark goal, run by run: Tollgate's throughput against the fastest peer's, and its
p99s against that peer's (under load, T, and on one connection, L).

    python3 bench/verdict.py [--project NAME] RESULTS_DIR [RESULTS_DIR ...]

RESULTS_DIR: a folder written by ../shared/bench/run.sh (results.tsv); a bare run id is looked up
under ../shared/bench/results. The peers are nginx and haproxy (whichever has the higher T rps
in that run is "the fastest"); the judged proxy is the `tollgate` target (access log off), as
`bench/run.sh` names it, or the project given with `--project` (`nginx-again` for the runs of
`bench/aa.sh`). The proxies' CPU per request is printed beside each rate: when the peers
are well above their usual ~18-19 µs, or the largest `other %` / `steal %` the harness recorded
(printed last) is more than a few percent, the VM was disturbed during the run and it says little.
The last line counts the runs that meet the goal (throughput at least the fastest peer's and both
p99s no worse); nothing here is averaged across runs.
"""
import argparse
import csv
import os
import statistics
import sys
from typing import NamedTuple

PEERS = ("nginx", "haproxy")
DEFAULT_PROJECT = "tollgate"
SHARED_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench", "results")


def load(path):
    if not os.path.isdir(path):
        path = os.path.join(SHARED_RESULTS, path)
    with open(os.path.join(path, "results.tsv")) as tsv:
        rows = list(csv.DictReader(tsv, delimiter="\t"))
    return os.path.basename(os.path.normpath(path)), {(r["target"], r["run"]): r for r in rows}


def value(rows, target, run, column):
    try:
        return float(rows[(target, run)][column])
    except (KeyError, TypeError, ValueError):
        return None


class Outcome(NamedTuple):
    """One run's verdict: throughput ÷ the fastest peer's, and per p99 (T, L) its ratio to the
    peer's (None when a row is missing) and whether it is no worse."""

    ratio: float
    p99: dict

    @property
    def met(self):
        return self.ratio >= 1.0 and all(ok for _, ok in self.p99.values())


def verdict(name, rows, project=DEFAULT_PROJECT):
    peers = [p for p in PEERS if value(rows, p, "T", "rps")]
    if not peers or value(rows, project, "T", "rps") is None:
        return None, f"{name}: no {project} or peer throughput row"
    fastest = max(peers, key=lambda p: value(rows, p, "T", "rps"))
    rps, peer_rps = value(rows, project, "T", "rps"), value(rows, fastest, "T", "rps")
    ratio = rps / peer_rps
    checks = []
    for run in ("T", "L"):
        ours, theirs = value(rows, project, run, "p99_us"), value(rows, fastest, run, "p99_us")
        ok = ours is not None and theirs is not None and ours <= theirs
        checks.append((run, ours, theirs, ok))
    outcome = Outcome(ratio, {run: (o / t if o and t else None, ok) for run, o, t, ok in checks})
    cpu = " ".join(
        f"{t} {value(rows, t, 'T', 'rps') or 0:.0f} ({rows.get((t, 'T'), {}).get('proxy_cpu_us_per_req') or '-'} µs)"
        for t in (*peers, project)
    )
    p99s = " ".join(f"{run} p99 {o:.0f}/{t:.0f} {'ok' if ok else 'worse'}" for run, o, t, ok in checks if o and t)
    line = f"{name}: {cpu} | {ratio:.2f} of {fastest} | {p99s} | {'MET' if outcome.met else 'not met'}{disturbance(rows, (*peers, project))}"
    return outcome, line


def disturbance(rows, targets):
    """The largest `other %` and `steal %` of the compared throughput rows, as the harness records
    them (CPU taken during the run by processes that are not the benchmark's, and by the
    hypervisor); empty for results from a harness that did not record them."""
    found = []
    for column, label in (("other_cpu_pct", "other"), ("steal_pct", "steal")):
        values = [v for t in targets if (v := value(rows, t, "T", column)) is not None]
        if values:
            found.append(f"{label} <= {max(values):.0f}%")
    return f" ({', '.join(found)})" if found else ""


def main(args):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="the judged target (default: tollgate)")
    parser.add_argument("paths", nargs="*", metavar="RESULTS_DIR")
    options = parser.parse_args(args)
    if not options.paths:
        print(__doc__.strip())
        return 2
    outcomes = []
    for path in options.paths:
        outcome, line = verdict(*load(path), options.project)
        print(line)
        if outcome:
            outcomes.append(outcome)
    if outcomes:
        ratios = [o.ratio for o in outcomes]
        p99s = []
        for run in ("T", "L"):
            found = [o.p99[run] for o in outcomes if o.p99[run][0] is not None]
            if found:
                median = statistics.median(r for r, _ in found)
                p99s.append(f"{run} p99 no worse in {sum(1 for _, ok in found if ok)} (median {median:.2f} of the peer's)")
        print(
            f"{len(outcomes)} runs: throughput {min(ratios):.2f}-{max(ratios):.2f} of the fastest peer "
            f"(median {statistics.median(ratios):.2f}, at least the peer's in {sum(1 for r in ratios if r >= 1.0)}); "
            f"{'; '.join(p99s)}; goal met in {sum(1 for o in outcomes if o.met)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
