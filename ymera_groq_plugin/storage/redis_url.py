"""Redis URLs as redis-py users write them, for one server, a cluster or a Sentinel group.

```
redis://[[user]:password@]host[:port][/db][?option=value…]       one server
rediss://…                                                        one server over TLS
unix://[[user]:password@]/path/to/socket[?db=N…]                  one server, local socket
redis+cluster://[[user]:password@]host:port[,host:port…][/0][?…]  Redis Cluster (startup nodes)
rediss+cluster://…                                                the same over TLS
redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db][?…]
rediss+sentinel://…                                               the master over TLS
```

Query options are redis-py's (`socket_timeout`, `ssl_cert_reqs`, …) and apply to the data
connections. Sentinels themselves are reached without the URL's credentials unless
`sentinel_password=` (and `sentinel_username=`) is given in the query. `master_check=`
(Sentinel only, seconds, default 0.5) is how often, while commands flow, the client asks the
Sentinel which server is the primary (see `storage.base.redis_client`). A cluster has only
database 0. A bad URL raises `ConfigurationError` naming the URL with its password masked.

`redis_client` (in `storage.base`) builds the client from a parsed URL: `redis.asyncio.Redis`,
`redis.asyncio.cluster.RedisCluster` over the listed startup nodes, or the master of
`redis.asyncio.sentinel.Sentinel(...).master_for(service_name)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import ConfigurationError

__all__ = [
    "REDIS_SCHEMES",
    "RedisTarget",
    "mask_redis_url",
    "parse_redis_url",
    "redis_topology",
]

Topology = Literal["server", "cluster", "sentinel"]

REDIS_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "unix": ("server", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
"""URL scheme -> (topology, TLS)."""

_DEFAULT_PORT = {"server": 6379, "cluster": 6379, "sentinel": 26379}
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)([^@/?#]*)@", re.IGNORECASE)


def mask_redis_url(url: str) -> str:
    """The URL with its password (in the user info and in `*password=` options) as `***`."""

    def hide(m: re.Match[str]) -> str:
        user, colon, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}{':***' if colon else ''}@"

    out = _USERINFO.sub(hide, url, count=1)
    return re.sub(r"((?:^|[?&])[^=&]*password=)[^&#]*", r"\1***", out, flags=re.IGNORECASE)


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL.

    Attributes:
        topology: `"server"`, `"cluster"` or `"sentinel"`.
        url: The URL as given (use `masked` to show it).
        nodes: (host, port) of the startup nodes or sentinels (empty for a single server:
            redis-py parses that URL itself).
        service: The Sentinel service name.
        db: The database number.
        tls: Whether the data connections use TLS.
        username: The user name for the data connections, if any.
        password: The password for the data connections, if any.
        query: The URL's query options (redis-py's names), sentinel options removed.
        sentinel_auth: `sentinel_username` / `sentinel_password` from the query.
        master_check: `master_check` from the query (Sentinel only), if given.
    """

    topology: Topology
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None
    query: tuple[tuple[str, str], ...] = ()
    sentinel_auth: tuple[tuple[str, str], ...] = ()
    master_check: float | None = None

    @property
    def masked(self) -> str:
        return mask_redis_url(self.url)

    def node_url(self) -> str:
        """A single-server URL carrying the credentials, database and options, for redis-py's
        own option parser (its host is the first node; callers replace it)."""
        host, port = self.nodes[0]
        auth = ""
        if self.username is not None or self.password is not None:
            from urllib.parse import quote

            auth = quote(self.username or "", safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        netloc = f"[{host}]" if ":" in host else host
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{netloc}:{port}/{self.db}{query}"


def _bad(url: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"Invalid Redis URL {mask_redis_url(url)!r}: {why}", setting="YMERA_REDIS_URL", detail=why
    )


def _node(url: str, text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise _bad(url, "an empty host in the node list")
    if text.startswith("["):  # [IPv6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(url, f"a malformed IPv6 host {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _bad(url, f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"an invalid port in {text!r}")
    return host, int(port_text)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse and check a Redis URL (no network, no redis import).

    Raises:
        ConfigurationError: The scheme is not a Redis one, or the URL is malformed; the message
            names the URL with its password masked.
    """
    if not isinstance(url, str) or not url.strip():
        raise _bad(str(url), "empty")
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in REDIS_SCHEMES:
        raise _bad(url, "expected " + ", ".join(f"{s}://" for s in REDIS_SCHEMES))
    topology, tls = REDIS_SCHEMES[scheme]
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if topology == "server":
        # One server: redis-py parses it; check what it would fail on later, vaguely.
        if scheme != "unix" and not hosts:
            raise _bad(url, "no host")
        if scheme != "unix":
            if "," in hosts:
                raise _bad(url, "several hosts: use redis+cluster:// or redis+sentinel://")
            _node(url, hosts, 6379)
        elif not parts.path:
            raise _bad(url, "no socket path")
        if any(name == "master_check" for name, _ in parse_qsl(parts.query)):
            raise _bad(url, "master_check applies to redis+sentinel:// URLs only")
        return RedisTarget(topology, url, tls=tls)
    from urllib.parse import unquote

    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes = tuple(_node(url, h, _DEFAULT_PORT[topology]) for h in hosts.split(","))
    segments = [s for s in parts.path.split("/") if s]
    query: list[tuple[str, str]] = []
    sentinel_auth: list[tuple[str, str]] = []
    db_option: str | None = None
    master_check: float | None = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "master_check":
            if topology != "sentinel":
                raise _bad(url, "master_check applies to redis+sentinel:// URLs only")
            try:
                master_check = float(value)
            except ValueError:
                master_check = -1.0
            if not 0 <= master_check < float("inf"):
                raise _bad(url, f"master_check={value!r} is not a number of seconds >= 0")
        elif name in _SENTINEL_OPTIONS:
            sentinel_auth.append((name[len("sentinel_") :], value))
        elif name == "db":
            db_option = value
        else:
            query.append((name, value))
    service: str | None = None
    if topology == "sentinel":
        if not segments:
            raise _bad(url, "no service name (redis+sentinel://host:port/service_name[/db])")
        service, segments = unquote(segments[0]), segments[1:]
    if len(segments) > 1:
        raise _bad(url, f"unexpected path {parts.path!r}")
    db_text = segments[0] if segments else db_option
    db = 0
    if db_text is not None:
        if not db_text.isdigit():
            raise _bad(url, f"the database {db_text!r} is not a number")
        db = int(db_text)
    if topology == "cluster" and db != 0:
        raise _bad(url, "a Redis Cluster has only database 0")
    return RedisTarget(
        topology,
        url,
        nodes=nodes,
        service=service,
        db=db,
        tls=tls,
        username=username,
        password=password,
        query=tuple(query),
        sentinel_auth=tuple(sentinel_auth),
        master_check=master_check,
    )


def redis_topology(url: str | None) -> Topology | None:
    """`"server"`, `"cluster"` or `"sentinel"` for a Redis URL; `None` for none or a bad one."""
    if not url:
        return None
    try:
        return parse_redis_url(url).topology
    except ConfigurationError:
        return None


def client_options(target: RedisTarget) -> dict[str, Any]:
    """redis-py connection keywords for a cluster or Sentinel target (credentials, database,
    typed query options, TLS): the first node's single-server URL through redis-py's parser,
    without its host, port and connection class."""
    from redis.asyncio.connection import parse_url

    try:
        options = dict(parse_url(target.node_url()))
    except ValueError as exc:
        raise _bad(target.url, str(exc)) from None
    for name in ("host", "port", "connection_class", "path"):
        options.pop(name, None)
    if target.tls:
        options["ssl"] = True
    if target.topology == "cluster":
        options.pop("db", None)
    return options
