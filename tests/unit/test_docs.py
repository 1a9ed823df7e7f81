"""The documentation site builds in strict mode: a broken link, a missing anchor or a page
left out of the nav fails here, and so in CI."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()


def test_the_readme_fits_on_a_screen_and_links_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in ("architecture", "configuration", "datasets", "rewards", "conformance", "operations", "security",
                 "deployment", "metrics", "performance", "experiments", "testing"):
        assert f"(docs/{page}.md)" in readme and (ROOT / "docs" / f"{page}.md").is_file(), page


def test_every_conformance_rule_is_on_the_docs_page():
    """An author in Go or Rust reads what is checked there, not in Python."""
    from hatchery.conformance import RULES

    page = (ROOT / "docs" / "conformance.md").read_text()
    missing = [name for name in RULES if f"`{name}`" not in page]
    assert not missing, f"docs/conformance.md does not describe {missing}"
