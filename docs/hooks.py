"""MkDocs build hook: the recorded plots under benchmarks/results/ become part of the site.

The plots stay where `fedlottery report` and the benchmarks wrote them (beside the records they were made
from); this hook adds every PNG there to the build under the same path, `benchmarks/results/...`, so a page
at the top of docs/ shows one with `![...](benchmarks/results/table2_mnist/frontier_seeds.png)` (and a page
in docs/strategies/ with `../benchmarks/...`). `mkdocs build --strict` then checks those links like any other.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"


def on_files(files: Files, config) -> Files:
    for path in sorted((ROOT / RESULTS).rglob("*.png")):
        rel = path.relative_to(ROOT).as_posix()
        if files.get_file_from_path(rel) is None:
            files.append(File(rel, src_dir=str(ROOT), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files
