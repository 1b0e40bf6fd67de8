"""A replicated key/value store — the worked example of a Legion engine.

Each key lives in one partition (``legion.keyspace.partition_of``) and is
replicated to that partition's ``N`` nodes. A write is one operation — ``put``
(value + content type) or ``delete`` (a tombstone) — stamped with a hybrid
logical clock; every replica keeps, per key, the entry with the newest
``(hlc, origin)``, so replicas that saw the same operations agree whatever
order they arrived in. A read asks ``r`` replicas and returns the newest
answer. Each partition is one SQLite database in WAL mode.

Quickstart, from a shell (with a running cluster in ``./.legion``)::

    legion kv put greeting "hello, world"
    legion kv get greeting                # prints: hello, world
    legion kv get greeting --json         # value, encoding, content_type, hlc
    legion kv delete greeting
    cat photo.jpg | legion kv put photo - --content-type image/jpeg
    legion kv import users.ndjson         # {"key": "user:1", "value": "Ada"} per line
    legion kv list user:                  # live keys starting with "user:", in order

From Python::

    from legion.client import Client
    from engines.kv import KVClient

    kv = KVClient(Client.connect(".legion"))
    kv.put("greeting", "hello, world")
    kv.get("greeting").value              # b"hello, world"
    kv.delete("greeting", w=3)            # wait for all three replicas
    kv.put_many([{"key": "a", "value": "1"}, {"key": "b", "value": b"raw bytes"}])
    kv.list_keys(limit=100).keys          # ["a", "b"]: deleted keys are not listed

Over HTTP: ``PUT``/``GET``/``DELETE /v1/kv/{key}``, the key percent-encoded;
``POST /v1/kv`` for many keys at once (NDJSON or msgpack, one result per
line, through ``Cluster.write_many``) and ``GET /v1/kv?prefix=&after=&limit=``
for a key listing (a coverage request).

Modules: ``entries`` (pure: operation bodies, records, last-writer-wins
merge, bulk lines, listing merges), ``engine`` (SQLite storage and the HTTP handlers), ``client`` (typed
client methods), ``cli`` (``legion kv …``). ``docs/writing-an-engine.md``
walks through this package as the template for new engines.
"""

from engines.kv.client import ImportReport, KeyListing, KVClient, KVValue
from engines.kv.engine import KVEngine

__all__ = ["ImportReport", "KVClient", "KVEngine", "KVValue", "KeyListing"]
