"""README's Set-up: two commands, the demo and the test command; the test command (what
.ci/run extracts and runs) installs every Debian package a test names as its install
step; and a skipped test fails the run (tests/conftest.py)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from tests.deploy.tools import _INSTALL

REPO = pathlib.Path(__file__).resolve().parents[1]
TEST_SCRIPT = REPO / "scripts" / "test.sh"


def _setup_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("\n## Set-up (fresh machine)\n", 1)[1].split("\n## ", 1)[0]


def _debian_packages() -> list[str]:
    script = TEST_SCRIPT.read_text()
    block = re.search(r"^DEBIAN_PACKAGES=\((.*?)^\)", script, re.M | re.S)
    assert block, "scripts/test.sh lost its DEBIAN_PACKAGES list"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()
            if line.split("#", 1)[0].strip()]


def test_setup_shows_exactly_the_demo_and_the_test_command():
    section = _setup_section()
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    assert len(blocks) == 2, blocks
    assert "<!-- demo-command -->\n```" in section and "<!-- test-command -->\n```" in section


def test_ci_runs_the_readme_test_command_which_is_the_test_script():
    """.ci/run's own extraction (its awk line, run here) yields the script."""
    ci = (REPO / ".ci" / "run").read_text()
    awk = re.search(r'test_command="\$\((awk .*)\)"', ci)
    assert awk, ".ci/run no longer extracts the README test command"
    extracted = subprocess.run(["bash", "-c", awk.group(1)], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    assert extracted == "bash scripts/test.sh"
    assert 'bash -euo pipefail -c "$test_command"' in ci
    assert subprocess.run(["bash", "-n", str(TEST_SCRIPT)]).returncode == 0


def test_every_debian_install_step_a_test_names_is_in_the_test_command():
    packages = _debian_packages()
    named = {match for hint in _INSTALL.values()
             for match in re.findall(r"apt-get install -y (\S+)", hint)}
    named |= {"chromium"}   # tests/evaluation/chromium.py
    assert named and named <= set(packages), named - set(packages)


def test_a_skipped_test_fails_the_run(tmp_path):
    """Scenario: a suite with this repository's tests/conftest.py and one test that skips
    itself. We expect: pytest exits 1 and says the skip is a missing install step."""
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n\n@pytest.mark.skipif(True, reason='no frobnicator')\n"
        "def test_marked():\n    pass\n\n\ndef test_called():\n    pytest.skip('no widget')\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tmp_path)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 failed, 1 error"), result.stdout
    assert "missing install step" in result.stdout and "no frobnicator" in result.stdout
    assert "no widget" in result.stdout
