"""The README documents every setting, and CI runs the README's test command."""

import re
from pathlib import Path

from events.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert not missing, f"settings missing from the README: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^make (\w+)$", ci, re.M).group(1)
    assert f"make {command}" in README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
