"""The documentation matches the code: the configuration page is generated from the schemas and current, every
schema field is documented, every strategy page names its options, the MkDocs site builds with --strict, and
every relative link in README.md points at a file in the repository."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

from fedlottery.config import reference

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Each built-in strategy's page (several strategies may share one).
PAGES = {"fedavg": "fedavg", "fedbn": "fedbn", "local": "local", "lotteryfl": "lotteryfl", "fedltn": "fedltn",
         "flash-spdst": "flash", "flash-jmwst": "flash", "hetero-flash": "flash", "cell": "cell", "fedpm": "fedpm",
         "fedselect": "fedselect"}


def test_every_config_field_has_a_comment():
    assert reference.undocumented() == [], "document these fields with a comment beside them in fedlottery/config/"


def test_the_configuration_page_is_the_generated_one():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference.render(), "docs/configuration.md is stale: run python -m fedlottery.config.reference"


def test_the_reference_lists_every_field():
    page = reference.render()
    for _, root, _ in reference.ROOTS:
        for cls in [root] + [c for _, c in reference._sections(root)]:
            for f in dataclasses.fields(cls):
                assert f"| `{f.name}` |" in page or f.name in {k for k, _ in reference._sections(root)}, f.name


def test_field_docs_reads_comments_beside_and_above():
    @dataclasses.dataclass
    class Example:
        # above, line one
        # above, line two
        a: int = 1  # beside
        b: str = "x"
        c: float = 0.5  # only beside

    docs = reference.field_docs(Example)
    assert docs == {"a": "above, line one above, line two beside", "b": "", "c": "only beside"}


def test_every_strategy_page_names_its_options():
    import strategies

    for name, page in PAGES.items():
        text = (ROOT / "docs" / "strategies" / f"{page}.md").read_text()
        cls = strategies.get_strategy(name)
        assert f"`{name}`" in text, f"docs/strategies/{page}.md does not name {name}"
        for f in dataclasses.fields(cls.options_cls):
            assert f"`{f.name}`" in text, f"docs/strategies/{page}.md does not document option {f.name} of {name}"
    missing = sorted(set(strategies.available()) - set(PAGES))
    for name in missing:  # strategies added since: each needs a page of its own name
        assert (ROOT / "docs" / "strategies" / f"{name}.md").is_file(), f"no docs/strategies/{name}.md"


def test_every_relative_link_in_the_readme_resolves():
    broken = []
    for target in LINK.findall((ROOT / "README.md").read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (ROOT / path).exists():
            broken.append(target)
    assert not broken, f"README.md links to missing files: {broken}"


def test_the_site_builds_strictly(tmp_path):
    """mkdocs-material comes with the `test` extra; a warning (a broken link or anchor) fails the build."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "WARNING" not in output, output[-4000:]
    assert (tmp_path / "site" / "benchmarks" / "results" / "table2_mnist" / "frontier_seeds.png").is_file()
