"""The documentation's generated configuration reference and the README's links.

The docs site itself is built strictly by `bash scripts/run.sh test` (broken links, anchors and pages
missing from the nav fail there); these tests cover what that build does not: that the generated
reference really lists every setting with its default and its limits, and that the README (not part
of the site) links only to files that exist.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import typing
from pathlib import Path

import pytest

from policytrim.config import ConfigError, RunConfig, to_dict

ROOT = Path(__file__).resolve().parent.parent


def _reference():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(markdown: str) -> dict[str, list[str]]:
    """Flag -> the cells of its table row."""
    rows = {}
    for line in markdown.splitlines():
        match = re.match(r"\| `(--[a-z0-9.\-]+)` \|", line)
        if match:
            rows[match.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    return rows


def test_reference_lists_every_setting_with_its_default_and_doc():
    ref = _reference()
    rows = _rows(ref.render())
    expected = set()
    for section, value in to_dict(RunConfig()).items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, default in items:
            flag = (f"--{section}.{key}" if key else f"--{section}").replace("_", "-")
            expected.add(flag)
            assert flag in rows, f"{flag} missing from the configuration reference"
            shown = rows[flag][2]
            if isinstance(default, bool):
                assert shown == f"`{str(default).lower()}`"
            elif isinstance(default, list):
                assert shown.startswith("`[") and all(str(v) in shown for v in default)
            elif default != "":
                assert str(default) in shown, f"{flag}: default {default!r} not in {shown!r}"
    assert set(rows) == expected
    # every field has its docstring (the --help line) in the table
    for section, cls in ref.sections():
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
                continue
            flag = (f"--{f.name}" if section == ref.TOP else f"--{section}.{f.name}").replace("_", "-")
            assert rows[flag][4], f"{flag} has no description: add a docstring under the field in config.py"


def _too_large(annotation):
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _too_large(typing.get_args(annotation)[0])
    if annotation is int:
        return 10**12
    if annotation is float:
        return 1e12
    return None


def test_every_checked_bound_appears_as_a_limit():
    """A numeric field that refuses a huge value must show a limit: the reference cannot drop a check."""
    ref = _reference()
    rows = _rows(ref.render())
    checked = 0
    for section, cls in ref.sections():
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            value = _too_large(hints[f.name])
            if value is None:
                continue
            try:
                cls(**{f.name: value})
            except ConfigError:
                flag = (f"--{f.name}" if section == ref.TOP else f"--{section}.{f.name}").replace("_", "-")
                assert rows[flag][3] != "—", f"{flag} refuses {value} but the reference shows no limit"
                checked += 1
    assert checked >= 40  # most numeric settings are bounded (limits.py)


def test_limits_come_from_the_limits_module():
    rows = _rows(_reference().render())
    from policytrim import limits

    assert f"[1, {limits.MAX_HORIZON:,}]" in rows["--env.horizon"][3]
    assert f"[2, {limits.MAX_GROUP_SIZE}]" in rows["--rollout.group-size"][3]


def test_docs_page_has_the_marker_the_hook_fills():
    assert _reference().MARKER in (ROOT / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize("name", ["README.md", "benchmarks/README.md"])
def test_relative_links_point_to_existing_files(name):
    """Markdown outside the docs site (the README) is not checked by the strict MkDocs build."""
    path = ROOT / name
    links = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    assert links
    for link in links:
        if "://" in link or link.startswith("#"):
            continue
        target = (path.parent / link.split("#")[0]).resolve()
        assert target.exists(), f"{name} links to {link}, which does not exist"
        anchor = link.partition("#")[2]
        if anchor and target.suffix == ".md":
            slugs = {
                re.sub(r"[^a-z0-9 \-]", "", h.lower()).strip().replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", target.read_text(), flags=re.MULTILINE)
            }
            assert anchor in slugs, f"{name} links to {link}, but {target.name} has no heading #{anchor}"
