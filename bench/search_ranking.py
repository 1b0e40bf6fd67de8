"""Sharded search ranking against one reference index, on 50,000+ docstrings.

Run: ``.venv/bin/python bench/search_ranking.py [--root LABEL=PATH ...] [--docs N] [--shards 3]``.

The corpus (``engines.search.corpus``) is the standard library's docstrings
plus, by default, this virtualenv's ``site-packages`` and any other Python
standard library found beside this one (labelled, so ids stay unique) —
enough for 50,000+ docs. ``engines.search.testing`` indexes it into one
reference index and into ``--shards`` shards split by partition, twice:
clean, and "messy" (updated and deleted docs left behind as deleted docs
and tombstones, and a replica of another shard's partitions in every shard).

Every query of ``testing.QUERIES`` then runs three ways:

- ``exact``: global idf (boosts) and exact rescoring of each shard's
  candidates from ``explain`` with the global idf and average field lengths
  (the token totals come from per-doc ``_len_<field>`` fast fields summed
  in round 1);
- ``global_idf``: the boosts only;
- ``local``: each shard's own statistics.

It prints, for each, mean overlap@10, top-1 agreement, the share of scores
bit-identical to the reference, and the time of round 1 and round 2 per
query and shard (shards run one after the other in this process; no
network). The difference between ``exact`` and ``global_idf`` in round 1 is
the cost of the field-length statistic, in round 2 the cost of rescoring.

Known gap: a run of more than ``node_hits.TIE_RUN_HITS_MAX`` tied scores at
a shard's cut (``kind:class`` on the full corpus: every class scores the
same) is cut in tantivy's order, not by id, so overlap can lose a hit there.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.search import corpus, testing  # noqa: E402
from engines.search.query_compile import RANKING_EXACT, RANKING_GLOBAL_IDF, RANKING_LOCAL  # noqa: E402

PYENV_VERSIONS = Path.home() / ".pyenv" / "versions"


def default_roots() -> list[corpus.Root]:
    """The standard library, this environment's site-packages, and other Pythons' standard libraries."""
    roots = [corpus.stdlib_root(), corpus.Root(Path(sysconfig.get_paths()["purelib"]), "site")]
    here = Path(sysconfig.get_paths()["stdlib"]).resolve()
    for stdlib in sorted(PYENV_VERSIONS.glob("3.*/lib/python3.*")):
        if stdlib.resolve() != here and (stdlib / "os.py").exists():
            roots.append(corpus.Root(stdlib, f"py{stdlib.name[len('python'):]}"))
    return roots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", action="append", default=[], metavar="LABEL=PATH", help="trees instead of the defaults")
    parser.add_argument("--docs", type=int, default=None, help="at most this many docs")
    parser.add_argument("--shards", type=int, default=3)
    args = parser.parse_args()
    roots = [corpus.Root(Path(path), label) for label, _, path in (spec.partition("=") for spec in args.root)]
    roots = roots or default_roots()

    docs = list(corpus.documents(roots, limit=args.docs))
    for root in roots:
        prefix = f"{root.label}:" if root.label else ""
        count = sum(1 for doc in docs if doc.id.startswith(prefix) and (prefix or ":" not in doc.id))
        print(f"{count:>8} docs  {root.label or '(stdlib)'}  {root.path}")
    print(f"{len(docs):>8} docs in all; {len(testing.QUERIES)} queries; {args.shards} shards; top 10\n")

    for messy in (False, True):
        started = time.perf_counter()
        sharded = testing.ShardedCorpus.build(docs, shards=args.shards, messy=messy)
        print(f"{'messy' if messy else 'clean'} shards, built in {time.perf_counter() - started:.1f} s")
        for ranking in (RANKING_EXACT, RANKING_GLOBAL_IDF, RANKING_LOCAL):
            comparisons = [sharded.compare(query, ranking, k=10) for query in testing.QUERIES]
            figures = testing.summary(comparisons)
            print(
                f"  {ranking:>10}: overlap@10 {figures['overlap']:.4f}  top-1 {figures['top1']:.4f}  "
                f"bit-identical {figures['identical_scores']:.4f}  "
                f"round 1 {figures['round1_ms'] / args.shards:6.2f} ms  round 2 {figures['round2_ms'] / args.shards:6.2f} ms"
                " per query and shard"
            )
        print()


if __name__ == "__main__":
    main()
