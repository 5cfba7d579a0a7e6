"""The README's configuration section stays true: its example file parses, and it names
every setting the broker has."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

from pyo3mq import BrokerConfig
from pyo3mq._pyo3mq import config_defaults

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the package depends on tomli there
    import tomli as tomllib

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_example_has_every_setting_and_parses() -> None:
    text = README.read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, "the README has a ```toml example"
    settings = tomllib.loads(block.group(1))["broker"]
    assert set(settings) == {f.name for f in fields(BrokerConfig)}
    BrokerConfig.from_mapping(settings)  # values of the right types and in range


def test_readme_settings_table_has_every_setting() -> None:
    rows = set(re.findall(r"^\| `([a-z_0-9]+)` \|", README.read_text(), re.M))
    assert {f.name for f in fields(BrokerConfig)} <= rows


def test_broker_config_is_the_core_s_settings() -> None:
    """Names and defaults are declared once, in Rust: `BrokerConfig` has exactly the
    core's settings, in its order, with its defaults."""
    defaults = config_defaults()
    config = BrokerConfig()
    assert [f.name for f in fields(BrokerConfig)] == list(defaults)
    assert {f.name: getattr(config, f.name) for f in fields(config)} == defaults
