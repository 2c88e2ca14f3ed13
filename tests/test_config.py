"""Settings: validated once, sizes readable, flags derived from the dataclass."""

import argparse

import pytest

from segcache.config import ServeConfig, add_config_flags, config_from_args, parse_bytes


def test_sizes_read_with_units():
    assert parse_bytes("512MiB") == 512 << 20
    assert parse_bytes("2G") == 2 << 30
    assert parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="512MiB"):
        parse_bytes("lots")


def test_flags_come_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    config = config_from_args(parser.parse_args(["--cache-bytes", "1MiB", "--default-ttl", "30", "--port", "9"]))
    assert (config.cache_bytes, config.default_ttl, config.port) == (1 << 20, 30.0, 9)
    assert config_from_args(parser.parse_args([])) == ServeConfig()


@pytest.mark.parametrize("bad", [{"port": 0}, {"dtype": "int4"}, {"cache_bytes": -1}, {"default_ttl": 0}, {"threads": 0},
                                 {"block_tokens": 0}])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        ServeConfig(**bad)


def test_zero_budget_disables_the_cache():
    assert not ServeConfig(cache_bytes=0).cache_enabled
