"""The configuration reference (docs/configuration.md), generated from `policytrim.config`.

Every section of `RunConfig`, every field with its type, default, docstring and the limits its
``__post_init__`` checks, read from the dataclasses themselves (types, defaults) and from the source
of config.py (field docstrings, validator calls), so the page cannot drift from the code. The MkDocs
hook (scripts/mkdocs_hooks.py) puts the output in place of the marker on docs/configuration.md at
build time; ``python scripts/config_reference.py`` prints it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
import typing
from typing import Any, Literal

MARKER = "<!-- config-reference: generated at build time by scripts/config_reference.py -->"
TOP = "top level"


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after ``name: type = ...``) of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(hint, "__name__", str(hint))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(map(str, value)) + "]`" if value else "`[]` (empty)"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""` (empty)'
    return f"`{value}`"


def _number(value: Any) -> str:
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, float) else str(value)


class _Limits(ast.NodeVisitor):
    """Collects what the validators of one class check, per field name."""

    def __init__(self, namespace: dict[str, Any], own_section: str, valid: set[tuple[str, str]]) -> None:
        self.ns, self.own, self.valid = namespace, own_section, valid
        self.found: dict[tuple[str, str], list[str]] = {}
        self.loop: dict[str, tuple[str, ...]] = {}

    def _add(self, section: str, name: str, text: str) -> None:
        texts = self.found.setdefault((section, name), [])
        if text not in texts:
            texts.append(text)

    def _eval(self, node: ast.expr) -> str:
        try:
            code = compile(ast.Expression(node), "<limit>", "eval")
            return _number(eval(code, dict(self.ns)))  # config.py's own source, not input
        except Exception:  # noqa: BLE001 (an expression of the fields: shown as written)
            return ast.unparse(node).replace("self.", "")

    def _fields(self, node: ast.expr) -> list[str]:
        """``self.x`` -> [x]; ``getattr(self, name)`` inside ``for name in (...)`` -> those names."""
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return [node.attr]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Name)
        ):
            return list(self.loop.get(node.args[1].id, ()))
        return []

    def visit_For(self, node: ast.For) -> None:
        if isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple, ast.List)):
            values = [e.value for e in node.iter.elts if isinstance(e, ast.Constant)]
            self.loop[node.target.id] = tuple(values)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if name in ("_int_in", "check_int") and len(node.args) >= 4:
            for f in self._fields(node.args[1]):
                self._add(self.own, f, f"integer in [{self._eval(node.args[2])}, {self._eval(node.args[3])}]")
        elif name == "_in_range" and len(node.args) >= 4:
            for f in self._fields(node.args[1]):
                self._add(self.own, f, f"number in [{self._eval(node.args[2])}, {self._eval(node.args[3])}]")
        elif name == "_positive" and len(node.args) >= 2:
            for f in self._fields(node.args[1]):
                self._add(self.own, f, "> 0")
        elif name == "_require" and len(node.args) >= 2:
            self._require(node.args[1])
        self.generic_visit(node)

    def _require(self, message: ast.expr) -> None:
        """``_require(ok, f"section.field must ..., got {...}")``: the text between the names and ', got'."""
        parts: list[str] = []
        values = message.values if isinstance(message, ast.JoinedStr) else [message]
        for i, part in enumerate(values):
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif isinstance(part, ast.FormattedValue):
                if i == 0:  # f"{prefix}.lr must ...": a field of this (stage) section
                    parts.append(self.own)
                elif parts and parts[-1].endswith("="):  # "chunk_size={self.chunk_size}" -> "chunk_size"
                    parts[-1] = parts[-1][:-1]
                else:
                    parts.append(self._eval(part.value))
        text = "".join(parts)
        head, sep, rest = text.partition(" must ")
        if not sep:
            return
        rule = "must " + rest.split(", got")[0].strip()
        refs = re.findall(r"(?:^|[\s,:/])([a-z_0-9]+(?:\.[a-z_0-9]+)?)(?=$|[\s,:/])", head)
        named = [(ref, self._key(ref)) for ref in refs if self._key(ref) in self.valid]
        plain = re.sub(r"\band\b|[\s,/]", "", head)
        for ref, _ in named:
            plain = plain.replace(ref, "", 1)
        if plain or len(named) > 1:  # a condition or several fields: keep the whole sentence
            rule = text.split(", got")[0].strip()
        for _, key in named:
            self._add(*key, rule)

    def _key(self, ref: str) -> tuple[str, str]:
        """'stage1.windows' -> (stage1, windows); a bare name is this section's field, else a top-level one."""
        section, _, fld = ref.rpartition(".")
        if section:
            return section, fld
        return (self.own, fld) if (self.own, fld) in self.valid else (TOP, fld)


def sections() -> list[tuple[str, type]]:
    """(name, dataclass) for every section of RunConfig, then the top-level fields under TOP."""
    from policytrim import config

    hints = typing.get_type_hints(config.RunConfig, include_extras=True)
    fields = dataclasses.fields(config.RunConfig)
    out = [(f.name, hints[f.name]) for f in fields if dataclasses.is_dataclass(hints[f.name])]
    return out + [(TOP, config.RunConfig)]


def collect() -> dict[str, Any]:
    """Everything the page shows, as data: ``{section: {"doc", "fields": [{name, type, default, doc, limits}]}}``."""
    from policytrim import config

    secs = sections()
    valid = {(name, f.name) for name, cls in secs for f in dataclasses.fields(cls)}
    limits: dict[tuple[str, str], list[str]] = {}
    for section, cls in secs:
        for klass in cls.__mro__:
            if not dataclasses.is_dataclass(klass):
                continue
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
            validators = ("__post_init__", "_validate")
            for fn in (n for n in tree.body[0].body if isinstance(n, ast.FunctionDef) and n.name in validators):
                visitor = _Limits(vars(config), section, valid)
                visitor.visit(fn)
                for key, texts in visitor.found.items():
                    limits.setdefault(key, [])
                    limits[key] += [t for t in texts if t not in limits[key]]
    out: dict[str, Any] = {}
    for section, cls in secs:
        hints = typing.get_type_hints(cls, include_extras=True)
        docs = _field_docs(cls)
        fields = []
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            hint = hints[f.name]
            base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
            rules = limits.get((section, f.name), [])
            if typing.get_origin(base) is Literal or base is bool:  # the type already says what is accepted
                rules = [r for r in rules if not r.startswith("must be") or "," not in r and " or " not in r]
            fields.append(
                {
                    "name": f.name,
                    "type": _type_name(hint),
                    "default": _default(f),
                    "doc": docs.get(f.name, ""),
                    "limits": rules,
                }
            )
        doc = " ".join((inspect.getdoc(cls) or "").split()) if section != TOP else "Settings of the whole run."
        out[section] = {"doc": doc, "fields": fields}
    return out


def _cell(text: str) -> str:
    """Plain text in a Markdown table cell: no column breaks, no HTML tags (``<suite>`` stays visible)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def render() -> str:
    """The reference as Markdown: one table per section."""
    lines: list[str] = []
    for section, data in collect().items():
        title = f"`{section}`" if section != TOP else "Top level"
        lines += [f"## {title}", "", data["doc"], ""]
        lines += ["| field | type | default | limits | description |", "|---|---|---|---|---|"]
        for f in data["fields"]:
            flag = f"--{f['name']}" if section == TOP else f"--{section}.{f['name']}"
            limits = _cell("; ".join(f["limits"]) or "—")
            doc = _cell(f["doc"])
            flag = flag.replace("_", "-")
            lines.append(f"| `{flag}` | {f['type']} | {_show(f['default'])} | {limits} | {doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
