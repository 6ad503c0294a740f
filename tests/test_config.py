"""Configuration errors name where the bad value came from: the file, the environment variable
or the flag (docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from outlast.config import load_settings
from outlast.errors import ConfigError


def _error(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as exc:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return str(exc.value)


def test_a_typo_in_an_environment_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./outlast.toml
    message = _error(environ={"OUTLAST_SERVER__PROT": "1"})
    assert message == (
        "invalid configuration (environment variable OUTLAST_SERVER__PROT): "
        "unknown key 'server.prot'"
    )


def test_a_bad_value_from_the_environment_names_the_variable_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "outlast.toml"
    config.write_text("[server]\nport = 9000\n")
    message = _error(path=config, environ={"OUTLAST_QUEUES__DEFAULT__CAPACITY": "0"})
    assert "environment variable OUTLAST_QUEUES__DEFAULT__CAPACITY" in message
    assert str(config) not in message
    assert "'queues.default.capacity'" in message


def test_errors_in_the_file_and_flags_name_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./outlast.toml
    config = tmp_path / "other.toml"
    config.write_text("[streams]\nlong_poll_timeuot = 1\n")
    assert _error(path=config, environ={}) == (
        f"invalid configuration ({config}): unknown key 'streams.long_poll_timeuot'"
    )
    flagged = _error(environ={}, overrides={"server": {"port": 70000}})
    assert flagged.startswith("invalid configuration (command-line flag --port): 'server.port'")


def test_an_old_boolean_workers_setting_is_read_as_run_jobs_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``[server] workers`` was "run job workers here" (a boolean) before it became the number of
    processes: a file that still says ``workers = false`` keeps meaning API only."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "outlast.toml"
    config.write_text("[server]\nworkers = false\n")
    with caplog.at_level("WARNING", logger="outlast.config"):
        settings = load_settings(config, environ={})
    assert settings.server.run_jobs is False
    assert settings.server.workers == 1
    assert "deprecated" in caplog.text and "run_jobs" in caplog.text
    settings = load_settings(environ={"OUTLAST_SERVER__WORKERS": "true"})
    assert (settings.server.run_jobs, settings.server.workers) == (True, 1)


def test_workers_is_a_number_of_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={}, overrides={"server": {"workers": 4, "run_jobs": False}})
    assert (settings.server.workers, settings.server.run_jobs) == (4, False)
    assert load_settings(environ={}).server.workers == 1
    assert "'server.workers'" in _error(environ={"OUTLAST_SERVER__WORKERS": "-1"})
