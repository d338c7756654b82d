"""README's two set-up commands exist, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_opens_with_run_and_test_commands():
    cmds = _commands()
    assert cmds[:2] == ["bash scripts/setup-and-run.sh", "bash scripts/setup-and-test.sh"]
    for cmd in cmds[:2]:
        assert (REPO / cmd.split()[1]).is_file()


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert 'grep -m1 -E "^bash scripts/setup-and-test.sh" README.md' in ci
    assert 'bash -c "$cmd"' in ci
    test_script = (REPO / "scripts" / "setup-and-test.sh").read_text()
    assert "xvfb-run" in test_script and "pytest" in test_script
    assert '"$rc" -eq 5' in test_script  # no tests collected is a failure
