"""A real Redis Cluster and a real Sentinel group on loopback, from the same `redis-server`
binary as `RedisServer`, for tests, benchmarks and demos.

- `RedisClusterServer`: N primaries (3 by default), optionally one replica each; the launcher
  assigns the 16384 slots itself (`CLUSTER ADDSLOTS`, `CLUSTER MEET`, `CLUSTER REPLICATE`), so no
  `redis-cli` is needed. Nodes can be stopped and started again (they keep their cluster
  identity in their working directory).
- `RedisSentinelServer`: one primary, one replica and one Sentinel watching them; `failover()`
  switches the roles the way a Sentinel does after an outage.

Readiness is polled (`CLUSTER INFO`, `SENTINEL get-master-addr-by-name`, `INFO replication`),
never slept for. Both need the `redis` package (the `redis` extra) to configure the nodes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from .redis_server import RedisServer, _free_port, _StartsOnEnter, find_redis_server

__all__ = ["RedisClusterServer", "RedisSentinelServer", "free_cluster_port"]

SLOTS = 16384


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (`port + 10000`) is free too."""
    for _ in range(200):
        port = _free_port()
        if port + 10000 > 65535:
            port -= 20000  # ephemeral ports are high: try the same offset lower down
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b,
            ):
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def _client(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


def _call(port: int, *args: Any) -> Any:
    client = _client(port)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def _quiet(fn: Callable[[], bool]) -> Callable[[], bool]:
    """A readiness predicate that reads a refused connection as "not yet"."""

    def check() -> bool:
        try:
            return fn()
        except Exception:
            return False

    return check


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):  # redis-py parsed it already
        return {_text(k): _text(v) for k, v in raw.items()}
    out: dict[str, str] = {}
    for line in _text(raw).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _role(port: int) -> str | None:
    """What the server on `port` says it is (`master`, `slave`)."""
    return _info(_call(port, "INFO", "replication")).get("role")


class RedisClusterServer(_StartsOnEnter):
    """A Redis Cluster on loopback: `primaries` primaries and `replicas` replicas of each.

    Args:
        primaries: Primary nodes (at least 3, as Redis requires for failover votes).
        replicas: Replicas per primary (0 or more).
        binary: The `redis-server` path; default: `find_redis_server()`.
        node_timeout_ms: `cluster-node-timeout`: how soon a silent node counts as failed (and
            a replica takes over).

    Raises:
        RuntimeError: No binary is found, or the cluster does not come up.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        *,
        binary: str | None = None,
        node_timeout_ms: int = 1000,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and no negative replicas")
        exe = binary or find_redis_server()
        if exe is None:
            raise RuntimeError("No redis-server found (see RedisServer)")
        self.binary = exe
        self.primaries = primaries
        self.replicas = replicas
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            # The rest of the cluster keeps serving its slots while one primary is down.
            "--cluster-require-full-coverage",
            "no",
            # Any replica may take over, however long ago it last heard from its primary.
            "--cluster-replica-validity-factor",
            "0",
        ]
        self.nodes = [
            RedisServer(free_cluster_port(), binary=exe, args=args)
            for _ in range(primaries * (1 + replicas))
        ]

    # -- addresses --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`redis+cluster://` over the first primaries (startup nodes; the client finds the
        rest)."""
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])
        return f"redis+cluster://{seeds}"

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)

    def node_id(self, node: RedisServer) -> str:
        return _text(_call(node.port, "CLUSTER", "MYID"))

    def primary_ports(self) -> list[int]:
        """Ports of the running nodes that serve slots now (after failovers, not the initial
        ones; a stopped primary is left out before the cluster itself marks it failed)."""
        running = {n.port for n in self.nodes if n.running}
        for node in self.nodes:
            if not node.running:
                continue
            try:
                raw = _text(_call(node.port, "CLUSTER", "NODES"))
            except Exception:
                continue
            ports = []
            for line in raw.splitlines():
                fields = line.split()
                if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                    ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
            return sorted(p for p in ports if p in running)
        return []

    def node_for_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def node_for_key(self, key: str) -> RedisServer:
        """The node serving `key`'s slot now."""
        for node in self.nodes:
            if not node.running:
                continue
            slot = int(_call(node.port, "CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in _call(node.port, "CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return self.node_for_port(int(primary[1]))
        raise RuntimeError("no running node")

    def move_slot(self, key: str, to_port: int) -> tuple[int, int]:
        """Reshard: move `key`'s slot, with its keys, to the primary on `to_port` (the steps
        `redis-cli --cluster reshard` takes: IMPORTING, MIGRATING, MIGRATE, SETSLOT NODE).
        Clients holding the old slot map get `MOVED` (or `ASK` mid-move) afterwards. Returns
        (slot, port it left)."""
        source = self.node_for_key(key)
        slot = int(_call(source.port, "CLUSTER", "KEYSLOT", key))
        target = self.node_for_port(to_port)
        src_id, dst_id = self.node_id(source), self.node_id(target)
        _call(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        _call(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := _call(source.port, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            _call(source.port, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for port in self.primary_ports():
            _call(port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return slot, source.port

    # -- life cycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RedisClusterServer:
        """Start every node, assign the slots (first start) and wait until the cluster is ok
        on every node."""
        fresh = not any((n.workdir / "nodes.conf").exists() for n in self.nodes)
        for node in self.nodes:
            node.start()
        if fresh:
            self._create()
        self.wait_ok(timeout)
        return self

    def _create(self) -> None:
        primaries = self.nodes[: self.primaries]
        per = SLOTS // self.primaries
        for i, node in enumerate(primaries):
            first = i * per
            last = SLOTS - 1 if i == self.primaries - 1 else first + per - 1
            _call(node.port, "CLUSTER", "ADDSLOTS", *range(first, last + 1))
        for node in self.nodes[1:]:
            _call(node.port, "CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        ids = [self.node_id(n) for n in primaries]
        for k, node in enumerate(self.nodes[self.primaries :]):
            primary_id = ids[k % self.primaries]
            # A replica can follow a primary only once it knows it through the gossip.

            def knows(port: int = node.port, wanted: str = primary_id) -> bool:
                return wanted in _text(_call(port, "CLUSTER", "NODES"))

            _wait(_quiet(knows), "a replica to learn its primary", 10)
            _call(node.port, "CLUSTER", "REPLICATE", primary_id)

    def _ok(self) -> bool:
        total = len(self.nodes)
        for node in self.nodes:
            info = _info(_call(node.port, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok":
                return False
            if int(info.get("cluster_slots_ok", 0)) != SLOTS:
                return False
            if int(info.get("cluster_known_nodes", 0)) != total:
                return False
        for node in self.nodes:
            info = _info(_call(node.port, "INFO", "replication"))
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports the cluster ok with every slot served."""
        _wait(_quiet(self._ok), "the cluster to be ok", timeout)

    def wait_primaries(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` primaries serve every slot (e.g. after a replica took over)."""

        def served() -> bool:
            ports = self.primary_ports()
            if len(ports) != count:
                return False
            info = _info(_call(ports[0], "CLUSTER", "INFO"))
            return info.get("cluster_state") == "ok" and int(info["cluster_slots_ok"]) == SLOTS

        _wait(_quiet(served), f"{count} primaries to serve every slot", timeout)

    def flushall(self) -> None:
        """Empty every primary (replicas follow)."""
        for port in self.primary_ports():
            _call(port, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __repr__(self) -> str:
        up = sum(n.running for n in self.nodes)
        return (
            f"<RedisClusterServer {self.primaries} primaries x {self.replicas} replicas, "
            f"{up}/{len(self.nodes)} nodes running>"
        )


class _SentinelProcess(RedisServer):
    """`redis-server <config> --sentinel` (Sentinel rewrites its config file as it learns)."""

    def __init__(self, port: int, *, binary: str, monitor: tuple[str, int], down_ms: int):
        super().__init__(port, binary=binary)
        self.config = self.workdir / "sentinel.conf"
        service, primary_port = monitor
        self.config.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_ms}\n"
            f"sentinel failover-timeout {service} {max(3 * down_ms, 3000)}\n"
            f"sentinel parallel-syncs {service} 1\n",
            encoding="utf-8",
        )

    def _command(self) -> list[str]:
        return [self.binary, str(self.config), "--sentinel", "--loglevel", "warning"]


class RedisSentinelServer(_StartsOnEnter):
    """One primary, one replica and one Sentinel (quorum 1) on loopback.

    Args:
        service: The Sentinel service name (the URL's path).
        binary: The `redis-server` path; default: `find_redis_server()`.
        down_after_ms: How long the primary may be silent before the Sentinel fails it over.

    Raises:
        RuntimeError: No binary is found, or the group does not come up.
    """

    def __init__(
        self, service: str = "ymera", *, binary: str | None = None, down_after_ms: int = 1000
    ) -> None:
        exe = binary or find_redis_server()
        if exe is None:
            raise RuntimeError("No redis-server found (see RedisServer)")
        self.binary = exe
        self.service = service
        self.servers = [RedisServer(binary=exe), RedisServer(binary=exe)]
        self.servers[1].args = ("--replicaof", "127.0.0.1", str(self.servers[0].port))
        self.sentinel = _SentinelProcess(
            _free_port(),
            binary=exe,
            monitor=(service, self.servers[0].port),
            down_ms=down_after_ms,
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}"

    @property
    def running(self) -> bool:
        return self.sentinel.running and all(s.running for s in self.servers)

    def master_port(self) -> int:
        """The primary's port as the Sentinel names it now."""
        _, port = _call(self.sentinel.port, "SENTINEL", "get-master-addr-by-name", self.service)
        return int(port)

    def primary(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def replica(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port != port)

    def start(self, timeout: float = 30.0) -> RedisSentinelServer:
        for server in self.servers:
            server.start()
        self.sentinel.start()
        self.wait_ready(timeout)
        return self

    def _ready(self) -> bool:
        if not self._record_clean():
            return False
        port = self.master_port()
        if _role(port) != "master":
            return False
        replicas = _call(self.sentinel.port, "SENTINEL", "replicas", self.service)
        if not replicas:
            return False
        for server in self.servers:
            if server.port == port or not server.running:
                continue
            info = _info(_call(server.port, "INFO", "replication"))
            if info.get("master_link_status") != "up" or info.get("master_port") != str(port):
                return False
        return True

    def _record(self) -> dict[str, str]:
        """The Sentinel's record of the service (`SENTINEL MASTER`)."""
        raw = _call(self.sentinel.port, "SENTINEL", "MASTER", self.service)
        if isinstance(raw, dict):
            return {_text(k): _text(v) for k, v in raw.items()}
        items = [_text(v) for v in raw]
        return dict(zip(items[::2], items[1::2], strict=False))

    def _record_clean(self) -> bool:
        record = self._record()
        return record.get("flags") == "master" and record.get("port") == str(self.master_port())

    def settle(self, timeout: float = 30.0) -> None:
        """One primary that the Sentinel and every running server agree on, ready for a test.

        After a switch, or a restart of a server started as the primary, a server can still
        call itself a primary for about ten seconds, until the Sentinel's next look at it; a
        client that reaches it then writes where nobody reads. Here it is turned into the
        named primary's replica at once, as the Sentinel would, and the group is waited for.
        """
        _wait(_quiet(self._record_clean), "the Sentinel to finish a switch", timeout)
        port = self.master_port()
        for server in self.servers:
            if server.port == port or not server.running:
                continue
            if _role(server.port) == "master":
                _call(server.port, "REPLICAOF", "127.0.0.1", str(port))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the Sentinel names a primary that says so, whose replica is linked and
        known to the Sentinel (so a failover has somewhere to go)."""
        _wait(_quiet(self._ready), "the Sentinel group to be ready", timeout)

    def failover(self, timeout: float = 30.0) -> int:
        """Switch primary and replica as a Sentinel does (`SENTINEL FAILOVER`); wait until the
        Sentinel names the new primary and it says so. Returns the new primary's port. (The
        old primary follows it within seconds; `wait_ready` waits for that too.)"""
        before = self.master_port()

        def asked() -> bool:
            try:
                _call(self.sentinel.port, "SENTINEL", "FAILOVER", self.service)
            except Exception as exc:
                # The Sentinel trusts a replica only with a recent INFO of it (it refreshes
                # every few seconds): until then it has "no good slave" and we ask again.
                if "NOGOODSLAVE" in str(exc) or "INPROG" in str(exc):
                    return False
                raise
            return True

        _wait(asked, "the Sentinel to accept a failover", timeout)

        def switched() -> bool:
            port = self.master_port()
            role = _role(port)
            return port != before and role == "master"

        _wait(_quiet(switched), "the Sentinel to switch", timeout)
        return self.master_port()

    def settled(self, old_port: int) -> bool:
        """The Sentinel has finished moving the primary away from `old_port`: it names another
        port, that server says it is a primary, and the Sentinel's record of the service carries
        no down or failover flag. Until then redis-py's `discover_master`, which reads those
        flags, answers `MasterNotFoundError` although `get-master-addr-by-name` already names
        the new port."""
        port = self.master_port()
        if port == old_port:
            return False
        if _role(port) != "master":
            return False
        return self._record().get("flags") == "master"

    def wait_promoted(self, old_port: int, timeout: float = 60.0) -> int:
        """Wait until `settled(old_port)`; returns the new primary's port."""
        _wait(
            _quiet(lambda: self.settled(old_port)),
            "the Sentinel to settle on a new primary",
            timeout,
        )
        return self.master_port()

    def flushall(self) -> None:
        _call(self.master_port(), "FLUSHALL")

    def close(self) -> None:
        self.sentinel.close()
        for server in self.servers:
            server.close()

    def __repr__(self) -> str:
        return f"<RedisSentinelServer {self.service} sentinel 127.0.0.1:{self.sentinel.port}>"
