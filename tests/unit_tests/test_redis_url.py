"""Redis URLs for one server, a cluster and a Sentinel group: parsed, checked, and masked."""

from __future__ import annotations

import pytest

from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.errors import ConfigurationError
from ymera_groq_plugin.storage import store_from_url
from ymera_groq_plugin.storage.redis_url import (
    client_options,
    mask_redis_url,
    parse_redis_url,
    redis_topology,
)


def test_single_server_forms_are_left_to_redis_py() -> None:
    for url in (
        "redis://localhost:6379/0",
        "rediss://:pw@cache.example:6380/2",
        "unix:///tmp/r.sock?db=1",
    ):
        target = parse_redis_url(url)
        assert target.topology == "server" and target.nodes == ()
    assert parse_redis_url("rediss://h").tls is True


def test_cluster_lists_its_startup_nodes() -> None:
    t = parse_redis_url("redis+cluster://user:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002,h4/0")
    assert t.topology == "cluster" and not t.tls
    assert t.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002), ("h4", 6379))
    assert (t.username, t.password, t.db) == ("user", "s3cret", 0)
    assert parse_redis_url("rediss+cluster://h:1").tls is True
    assert redis_topology("redis+cluster://h:1,h:2") == "cluster"


def test_sentinel_names_service_and_database() -> None:
    t = parse_redis_url(
        "redis+sentinel://:pw@s1:26379,s2/mymaster/3?socket_timeout=2&sentinel_password=sp"
    )
    assert t.topology == "sentinel"
    assert t.nodes == (("s1", 26379), ("s2", 26379))  # Sentinel's default port
    assert (t.service, t.db, t.password) == ("mymaster", 3, "pw")
    assert t.query == (("socket_timeout", "2"),)
    assert t.sentinel_auth == (("password", "sp"),)
    assert t.master_check is None
    assert parse_redis_url("redis+sentinel://s1/m?master_check=0.25").master_check == 0.25
    options = client_options(t)
    assert options["socket_timeout"] == 2.0 and options["db"] == 3 and options["password"] == "pw"
    assert "host" not in options and "port" not in options
    assert client_options(parse_redis_url("rediss+sentinel://s1/m"))["ssl"] is True
    assert "db" not in client_options(parse_redis_url("redis+cluster://h:1"))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://:hunter22@h:1/2", "only database 0"),
        ("redis+sentinel://:hunter22@h:26379", "no service name"),
        ("redis+sentinel://:hunter22@h:26379/svc/x", "not a number"),
        ("redis+cluster://:hunter22@h:99999", "invalid port"),
        ("redis+cluster://:hunter22@h:1,,h:2", "empty host"),
        ("redis://:hunter22@h1:1,h2:2/0", "several hosts"),
        ("redis+sentinel://:hunter22@s/svc/1/extra", "unexpected path"),
        ("memcached://:hunter22@h", "expected redis://"),
        ("redis://:hunter22@", "no host"),
        ("redis+sentinel://:hunter22@s/svc?master_check=soon", "not a number of seconds"),
        ("redis+sentinel://:hunter22@s/svc?master_check=-1", "not a number of seconds"),
        ("redis+sentinel://:hunter22@s/svc?master_check=inf", "not a number of seconds"),
        ("redis+cluster://:hunter22@h:1?master_check=1", "redis+sentinel:// URLs only"),
        ("redis://:hunter22@h:1/0?master_check=1", "redis+sentinel:// URLs only"),
    ],
)
def test_bad_urls_raise_configuration_error_with_the_password_masked(url: str, why: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_redis_url(url)
    text = str(info.value)
    assert why in text
    assert "hunter22" not in text and "***" in text


def test_settings_accept_every_form_and_never_echo_a_password() -> None:
    for url in (
        "redis://localhost/0",
        "redis+cluster://a:7000,b:7001",
        "rediss+sentinel://:pw@s1:26379,s2:26379/mymaster/0",
    ):
        assert YmeraSettings(redis_url=url).redis_url == url
    settings = YmeraSettings(redis_url="redis+sentinel://u:hunter22@s1/m")
    assert "hunter22" not in repr(settings) and "u:***@" in repr(settings)
    with pytest.raises(ConfigurationError) as info:
        YmeraSettings(redis_url="redis+cluster://:hunter22@h:1/5")
    assert "hunter22" not in str(info.value) and "only database 0" in str(info.value)


def test_store_from_url_knows_the_new_schemes_and_masks_unknown_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        store_from_url("quota", "redis+cluster://:hunter22@h:1/9")
    assert "hunter22" not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        store_from_url("cache", "bogus://:hunter22@h")
    assert "hunter22" not in str(info.value)


def test_mask_hides_query_passwords_too() -> None:
    assert (
        mask_redis_url("redis+sentinel://u:p@s/m?sentinel_password=x&socket_timeout=1")
        == "redis+sentinel://u:***@s/m?sentinel_password=***&socket_timeout=1"
    )
    assert mask_redis_url("redis://h:6379/0") == "redis://h:6379/0"
