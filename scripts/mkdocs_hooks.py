"""MkDocs hooks (mkdocs.yml: ``hooks``) for the policytrim docs site.

- The configuration reference is generated at build time from `policytrim.config`
  (scripts/config_reference.py) in place of its marker in docs/configuration.md, so it cannot go stale.
- Pages link to repository files outside docs/ the way GitHub shows them (``../benchmarks/results/demo.json``,
  ``../src/policytrim/objective.py``). MkDocs cannot resolve those; these hooks copy each linked file into the
  site under ``repo/`` and point the link there. A link to a repository file that does not exist is a
  warning, so ``mkdocs build --strict`` fails on it as on a broken link between pages.
"""

from __future__ import annotations

import importlib.util
import logging
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

log = logging.getLogger("mkdocs.hooks.policytrim")
ROOT = Path(__file__).resolve().parent.parent
REPO_PREFIX = "repo/"
# [text](../path) or [text](../path#anchor): a link from a page in docs/ to a file in the repository
LINK = re.compile(r"(\]\()(\.\./[^)\s#]+)(#[^)\s]*)?(\))")


def _reference_module():
    path = ROOT / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("policytrim_config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _repo_path(page_src_uri: str, link: str) -> str | None:
    """The repository-relative path a ``../`` link of a page points at, or None if it stays inside docs/."""
    target = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_src_uri), link))
    return None if target.startswith(("docs/", "..")) else target


def _local_links(path: str) -> list[str]:
    """Relative link targets in a repository Markdown file, as repository paths (no URLs, no anchors-only)."""
    text = (ROOT / path).read_text(encoding="utf-8")
    out = []
    for link in re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", text):
        if "://" in link or link.startswith(("mailto:", "/")):
            continue
        out.append(posixpath.normpath(posixpath.join(posixpath.dirname(path), link)))
    return out


def on_files(files, config):
    """Every repository file a page links to becomes a file of the site under repo/; a linked Markdown
    file (a result table) becomes a page outside the nav, and the files it links to come along."""
    docs_dir = Path(config["docs_dir"])
    todo: list[tuple[str, str]] = []
    for page in files.documentation_pages():
        text = (docs_dir / page.src_uri).read_text(encoding="utf-8")
        for match in LINK.finditer(text):
            target = _repo_path(page.src_uri, match.group(2))
            if target is not None:
                todo.append((page.src_uri, target))
    wanted: set[str] = set()
    while todo:
        source, target = todo.pop()
        if target in wanted:
            continue
        if target.startswith("..") or not (ROOT / target).is_file():
            log.warning("%s links to %s, which is not a file in the repository", source, target)
            continue
        wanted.add(target)
        if target.endswith(".md"):
            todo += [(target, t) for t in _local_links(target)]
    for target in sorted(wanted):
        inclusion = InclusionLevel.NOT_IN_NAV if target.endswith(".md") else InclusionLevel.UNDEFINED
        files.append(File.generated(config, REPO_PREFIX + target, abs_src_path=str(ROOT / target), inclusion=inclusion))
    return files


def on_page_markdown(markdown, page, config, files):
    """Links to repository files point at their copies; the configuration reference is filled in."""

    if page.file.src_uri.startswith(REPO_PREFIX):  # a copied result table: its links stay inside repo/
        return markdown

    def relink(match: re.Match) -> str:
        target = _repo_path(page.file.src_uri, match.group(2))
        if target is None:
            return match.group(0)
        up = "../" * page.file.src_uri.count("/")
        return f"{match.group(1)}{up}{REPO_PREFIX}{target}{match.group(3) or ''}{match.group(4)}"

    markdown = LINK.sub(relink, markdown)
    reference = _reference_module()
    if reference.MARKER in markdown:
        markdown = markdown.replace(reference.MARKER, reference.render())
    return markdown
