"""The README and docs/ as a newcomer reads them: the README opens with the two commands of a fresh machine,
no unfinished marker is left in a page, and every relative link points at a file of the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_opens_with_the_train_and_the_test_command():
    block = ROOT.joinpath("README.md").read_text().split("```")[1]  # the first code block
    commands = [line for line in block.splitlines()[1:] if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2, commands
    train, test = commands
    assert (
        "python3 -m venv" in train and "pip install -e ." in train and train.rstrip().endswith("t5vae train")
    )
    assert "python3 -m venv" in test and 'pip install -e ".[test]"' in test and "python -m pytest" in test


def test_the_ci_script_runs_the_readmes_test_command():
    block = ROOT.joinpath("README.md").read_text().split("```")[1]
    pytest_cmd = block.splitlines()[-1].rsplit("&&", 1)[-1].strip()
    assert pytest_cmd in ROOT.joinpath(".ci", "run").read_text().splitlines()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_unfinished_marker(page):
    text = page.read_text()
    for marker in ("PLACEHOLDER", "TODO", "TBD", "FIXME", "XXX"):
        assert marker not in text, f"{page.relative_to(ROOT)} still holds {marker!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_files(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor in the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
