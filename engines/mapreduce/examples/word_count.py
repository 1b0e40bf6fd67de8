"""Word count in record form: how often each word occurs in a dataset with a `line` column.

mrjob's classic. Python runs once per row here, which is fine for quick jobs;
the vectorised form (``map(part)`` over whole tables) is the fast path.
"""


def mapper(row):
    for word in (row["line"] or "").lower().split():
        yield word, 1


def combiner(word, counts):
    return sum(counts)


def reducer(word, counts):
    return sum(counts)
