from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config

POOL = "pools:\n  - name: main\n    model: some/model\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "surge.yaml"
    path.write_text(text)
    return path


def test_shipped_local_config_is_valid() -> None:
    config = load_config()
    assert config.pools[0].model_id == "surge-tiny"
    assert config.server.host == "127.0.0.1"


def test_defaults_fill_unspecified_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, POOL))
    assert config.server.port == 8000
    assert config.server.proxy == "haproxy"
    assert config.pools[0].model_names == ["main"]


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_SERVER__PORT", "8123")
    monkeypatch.setenv("SURGE_SERVER__PROXY", "standard")
    config = load_config(write(tmp_path, "server:\n  port: 9000\n  host: 0.0.0.0\n" + POOL))
    assert config.server.port == 8123
    assert config.server.proxy == "standard"
    assert config.server.host == "0.0.0.0"


def test_bad_field_fails_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(write(tmp_path, "server:\n  port: seventy\n" + POOL))


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pools\.0\.tensor_paralel_size"):
        load_config(write(tmp_path, POOL + "    tensor_paralel_size: 2\n"))


def test_config_without_pools_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pools"):
        load_config(write(tmp_path, "server:\n  port: 8000\n"))


def test_duplicate_model_alias_is_rejected(tmp_path: Path) -> None:
    text = POOL + "    aliases: [x]\n  - name: other\n    model: m2\n    aliases: [x]\n"
    with pytest.raises(ConfigError, match="duplicate model name or alias 'x'"):
        load_config(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "absent.yaml")


def test_route_table_has_pool_names_and_aliases(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, POOL + "    aliases: [default]\n"))
    table = config.route_table()
    assert table["default"].pools == {"main": 1.0}
    assert set(table) == {"main", "default"}


def test_explicit_route_overrides_pool_name(tmp_path: Path) -> None:
    text = "routing:\n  routes:\n    - model: main\n      pools: {main: 0.9, canary: 0.1}\n      fallback: canary\n"
    config = load_config(write(tmp_path, text + POOL + "  - name: canary\n    model: m2\n"))
    assert config.route_table()["main"].pools == {"main": 0.9, "canary": 0.1}
    assert config.route_table()["main"].fallback == "canary"


def test_route_to_unknown_pool_is_rejected(tmp_path: Path) -> None:
    text = "routing:\n  routes:\n    - model: x\n      pools: {ghost: 1}\n"
    with pytest.raises(ConfigError, match="unknown pool"):
        load_config(write(tmp_path, text + POOL))


def test_haproxy_wrapper_never_wraps_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.config import ServerConfig
    from cluster.env import ray_env

    first = ray_env(ServerConfig())
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", first["RAY_SERVE_HAPROXY_BINARY_PATH"])
    again = ray_env(ServerConfig())
    assert again["SURGE_HAPROXY_BINARY"] == first["SURGE_HAPROXY_BINARY"]
    assert not again["SURGE_HAPROXY_BINARY"].endswith("haproxy-loopback")
