"""``legion node …``: run one node process in the foreground.

Parses arguments into a ``legion.runtime.node.NodeConfig`` and hands over to
``legion.runtime.node.run``; no logic of its own beyond checking the
arguments. ``legion cluster up`` starts its nodes through this command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from legion.durability import check_durability
from legion.errors import ConfigError
from legion.etcd_metadata import parse_metadata_url
from legion.keyspace import check_partition_count
from legion.limits import ANTI_ENTROPY_INTERVAL_MS, PARTITIONS_DEFAULT, REPLICAS_DEFAULT
from cli.durability_option import DURABILITY_DEFAULT, DurabilityOption
from cli.engine_options import DaskSchedulerOption, with_dask_scheduler
from legion.options import parse_options

app = typer.Typer(help="Run a single node (what `legion cluster up` starts for you).", no_args_is_help=True)

LISTEN_EXAMPLE = "127.0.0.1:7400"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) as a host and a port; ConfigError if it is not."""
    host, separator, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not separator or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen must be HOST:PORT with a port from 1 to 65535, e.g. {LISTEN_EXAMPLE}; got {listen!r}")
    return host, int(port_text)


@app.command()
def start(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where this node keeps its data.")],
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to serve on.")] = LISTEN_EXAMPLE,
    join: Annotated[
        str | None, typer.Option("--join", help="URL of any node of the cluster to join (omit to start a new cluster).")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="The cluster token (default: DATA_DIR/token, created if new).")
    ] = None,
    node_id: Annotated[str | None, typer.Option("--node-id", help="This node's id (kept across restarts).")] = None,
    partitions: Annotated[
        int, typer.Option("--partitions", help="Partitions in a new cluster (a power of two).")
    ] = PARTITIONS_DEFAULT,
    replicas: Annotated[int, typer.Option("--replicas", help="Replicas of each partition.")] = REPLICAS_DEFAULT,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", metavar="KEY=VALUE", help="A setting for the engines (repeatable), e.g. mr.scheduler=tcp://HOST:PORT."),
    ] = None,
    dask_scheduler: DaskSchedulerOption = None,
    durability: DurabilityOption = DURABILITY_DEFAULT,
    metrics_open: Annotated[
        bool, typer.Option("--metrics-open", help="Serve GET /metrics without the token to clients on loopback.")
    ] = False,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="This node's certificate (PEM): serve HTTPS only.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The private key of --tls-cert (PEM).")] = None,
    tls_ca: Annotated[
        Path | None, typer.Option("--tls-ca", help="The cluster CA's certificate (PEM): peers must present one it signed.")
    ] = None,
    anti_entropy_interval_ms: Annotated[
        int,
        typer.Option(
            "--anti-entropy-interval-ms", envvar="LEGION_ANTI_ENTROPY_INTERVAL_MS", min=0,
            help="Milliseconds between background anti-entropy rounds (0: none; `legion cluster repair` still runs exchanges).",
        ),
    ] = ANTI_ENTROPY_INTERVAL_MS,
    metadata: Annotated[
        str | None,
        typer.Option(
            "--metadata", metavar="etcd://HOST:PORT[/PREFIX]",
            help="Keep the cluster state in etcd (key PREFIX/state, default /legion/state), changed by compare-and-swap, "
            "instead of by consensus among the nodes. Give every node of the cluster the same; the data directory remembers it.",
        ),
    ] = None,
) -> None:
    """Start a node and serve until SIGTERM or Ctrl-C."""
    host, port = parse_listen(listen)
    if metadata is not None:
        parse_metadata_url(metadata)
    mode = check_durability(durability)
    check_partition_count(partitions)
    options = with_dask_scheduler(parse_options(option or []), dask_scheduler)
    # Imported here: the runtime pulls in aiohttp and every engine, which
    # the other commands do not need.
    from legion.runtime.node import NodeConfig, run
    from legion.runtime.tls import tls_files

    config = NodeConfig(
        data_dir=data_dir,
        host=host,
        port=port,
        join=join,
        token_file=token_file,
        node_id=node_id,
        partitions=partitions,
        replicas=replicas,
        options=options,
        durability=mode,
        metrics_open=metrics_open,
        tls=tls_files(tls_cert, tls_key, tls_ca),
        anti_entropy_interval_ms=anti_entropy_interval_ms,
        metadata=metadata,
    )
    run(config)
