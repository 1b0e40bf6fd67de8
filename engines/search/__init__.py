"""A tantivy-backed sharded search index that ranks like one big index.

Documents live in partitions (``legion.keyspace.partition_of(id)``) and are
replicated like every Legion operation; each node keeps one tantivy index per
search index for all the partitions it holds, every document tagged with its
partition (as Riak Search did). A query is a two-round coverage request:
global term statistics from one replica of every partition, then scoring with
them — so the ranking equals that of one index over all the documents.

Quickstart, from a shell (with a running cluster in ``./.legion``)::

    legion search create docs --schema schema.json
    legion search ingest docs corpus.jsonl          # progress bar; searchable when it returns
    legion search query docs 'hash table' --limit 5
    legion search query docs 'title:"binary search" AND kind:function'
    legion search stats docs

From Python::

    from legion import Client
    from engines.search import SearchClient

    search = SearchClient(Client.connect(".legion"))
    search.create("docs", {"id_field": "id", "fields": {"id": {"type": "keyword"}, "body": {"type": "text"}}})
    search.put("docs", {"id": "a", "body": "hello world"}, refresh=True)
    search.search("docs", "hello")["hits"][0]["id"]   # 'a'

Modules: ``schema`` and ``operations`` (pure: schemas, documents, operation
bodies, the catalog), ``ranking`` and ``aggregations`` (pure: merging the
nodes' answers), ``query_tree`` (pure: tantivy's query tree), ``shard``,
``document_builder`` (what a node indexes for a document), ``scope`` (what a
committed searcher may show of a plan) and ``query_compile`` (tantivy),
``catalog_store`` (SQLite), ``local_search`` (one node's share of a search),
``engine`` (the engine contract), ``handlers`` (HTTP), ``bulk_ingest`` (a
bulk request on its coordinator: one ``batch`` operation per partition per
chunk), ``client`` and ``cli``.
"""

from engines.search.client import SearchClient

__all__ = ["SearchClient"]
