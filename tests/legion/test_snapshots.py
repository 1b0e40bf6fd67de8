"""``legion.snapshots``: manifest checks, file-name checks and what a receiver has left to fetch."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from legion.errors import BadRequest
from legion.replication import Operation
from legion.snapshots import Fetch, Manifest, SnapshotFile, check_file_name, fetch_plan

components = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
    lambda c: c not in (".", "..")
)
names = st.lists(components, min_size=1, max_size=3).map("/".join)
files = st.lists(
    st.builds(SnapshotFile, names, st.integers(0, 10_000), st.sampled_from(["a", "b", "c"])),
    max_size=8,
    unique_by=lambda f: f.name,
)


@given(names)
def test_plain_relative_names_are_accepted(name: str):
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../node.sqlite", "a/../../b", "a//b", "./a", "a/.", "a\\b", "a\x00b", "é", "a b", "x" * 513, 7, None],
)
def test_names_that_could_leave_the_snapshot_directory_are_refused(name: object):
    with pytest.raises(BadRequest, match="snapshot file name"):
        check_file_name(name)


@given(files, st.data())
def test_the_plan_fetches_exactly_what_is_missing_resuming_what_has_the_same_fingerprint(wanted, data):
    staged = {}
    for file in wanted:
        choice = data.draw(st.sampled_from(["none", "partial", "complete", "other", "longer"]))
        if choice == "partial":
            staged[file.name] = (file.fingerprint, data.draw(st.integers(0, file.size)))
        elif choice == "complete":
            staged[file.name] = (file.fingerprint, file.size)
        elif choice == "other":
            staged[file.name] = (file.fingerprint + "-old", data.draw(st.integers(0, 20_000)))
        elif choice == "longer":
            staged[file.name] = (file.fingerprint, file.size + 1)
    plan = {fetch.file.name: fetch.offset for fetch in fetch_plan(wanted, staged)}
    for file in wanted:
        fingerprint, have = staged.get(file.name, ("", 0))
        if fingerprint == file.fingerprint and have == file.size:
            assert file.name not in plan  # complete: nothing to fetch
        elif fingerprint == file.fingerprint and have < file.size:
            assert plan[file.name] == have  # cut short: continue where it stopped
        else:
            assert plan[file.name] == 0  # another file, or longer than it can be: start over


def test_a_zero_byte_file_is_fetched_once_then_complete():
    empty = SnapshotFile("e", 0, "f")
    assert fetch_plan([empty], {}) == [Fetch(empty, 0)]
    assert fetch_plan([empty], {"e": ("f", 0)}) == []


@given(files)
def test_a_manifest_survives_the_wire(wanted):
    op = Operation("mr", 3, b"k", 7, "n1", "create", b"{}")
    manifest = Manifest("0" * 32, "mr", 3, tuple(wanted), (op,))
    assert Manifest.from_wire(manifest.to_wire()) == manifest


@pytest.mark.parametrize(
    "change, message",
    [
        ({"id": "../x"}, "snapshot id"),
        ({"partition": "3"}, "integer 'partition'"),
        ({"files": [["../x", 1, "f"]]}, "snapshot file name"),
        ({"files": [["a", -1, "f"]]}, "negative size"),
        ({"files": [["a", 1, "f"], ["a", 2, "g"]]}, "names a file twice"),
        ({"files": [["a", "1", "f"]]}, r"\[name, size, fingerprint\]"),
        ({"operations": {}}, "lists 'files' and 'operations'"),
    ],
)
def test_a_malformed_manifest_is_refused_saying_what_is_wrong(change, message):
    wire = {**Manifest("0" * 32, "mr", 3, (SnapshotFile("a", 1, "f"),)).to_wire(), **change}
    with pytest.raises(BadRequest, match=message):
        Manifest.from_wire(wire)
