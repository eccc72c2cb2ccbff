"""mkdocs hook: generate the recipe-key and command-line reference pages from the code at build time.

`recipe_keys_markdown()` walks the recipe dataclasses (ssl_aug.config), the augmentation op registry
(ssl_aug.augment.ops.OPS) and the method registry (ssl_aug.methods.METHODS); `cli_markdown()` walks the
argparse parsers of `ssl-aug` (ssl_aug.cli.build_parser). `on_files` adds both pages to the site, so they
can never disagree with the installed code. Run this file directly to print both pages.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re

RECIPE_KEYS = "reference/recipe-keys.md"
CLI = "reference/cli.md"
FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?(?:#\s*(.*))?$")


def _comments(cls) -> dict[str, str]:
    """{field: the comment at the end of its line} from a dataclass's source."""
    notes = {}
    for line in inspect.getsource(cls).splitlines()[1:]:
        match = FIELD_LINE.match(line)
        if match and match.group(2):
            notes[match.group(1)] = match.group(2).strip()
    return notes


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _value(value) -> str:
    """A default as TOML-ish text in a table cell."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    text = json.dumps(value, default=str) if not isinstance(value, str) else json.dumps(value)
    return "`" + text.replace("|", "\\|") + "`"


def _type(field: dataclasses.Field) -> str:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return kind.replace("Optional[", "").rstrip("]") if kind.startswith("Optional[") else kind


def _section(prefix: str, cls, choices: dict) -> list[str]:
    notes = _comments(cls)
    rows = ["| key | type | default | notes |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        note = notes.get(field.name, "")
        if key in choices:
            note = ("one of " + ", ".join(f"`{c}`" for c in choices[key]) + ". " + note).strip()
        rows.append(f"| `{key}` | {_type(field)} | {_value(_default(field))} | {note.replace('|', '/')} |")
    return rows


def recipe_keys_markdown() -> str:
    """The recipe-key reference page (Markdown)."""
    from ssl_aug import config
    from ssl_aug.augment.ops import OPS
    from ssl_aug.augment.spec import NORM_FIELDS, ViewSpec
    from ssl_aug.methods import METHODS
    from ssl_aug.methods.base import method_options

    out = ["# Recipe keys", "",
           "Every key a recipe (`ssl_aug/recipes/*.toml` or your own TOML file) may set, with its default. "
           "Any key can be overridden on the command line as a dotted `key=value` "
           "(`ssl-aug train quickstart train.epochs=5 augment.color_jitter.p=0`); in Python, "
           "`load_recipe(name, [\"key=value\", ...])`. Unknown keys and bad values stop with one line naming "
           "the allowed ones. This page is generated from the code when the site is built.", "",
           "## Top-level keys", ""]
    sections = {"data": config.DataConfig, "model": config.ModelConfig, "train": config.TrainConfig,
                "eval": config.EvalConfig}
    top = [f for f in dataclasses.fields(config.Config) if f.name not in sections and f.name not in
           ("method", "augment")]
    out += ["| key | type | default |", "|---|---|---|"]
    out += [f"| `{f.name}` | {_type(f)} | {_value(_default(f))} |" for f in top]
    for name, cls in sections.items():
        out += ["", f"## [{name}]", ""] + _section(f"{name}.", cls, config.CHOICES)

    out += ["", "## [augment]", "",
            "The view keys: each registered augmentation op owns its keys; a nested op is a table "
            "(`augment.blur = {p = 0.5, sigma = [0.1, 2.0]}` or `augment.blur.p=0.5` on the command line). "
            "Defaults are the SimCLR CIFAR view. `preset` builds a named view preset at the recipe's `size`; "
            "the other keys then override each view family.", "",
            "| key | default | op |", "|---|---|---|"]
    spec = ViewSpec()
    for op_name, op in OPS.items():
        for key in op.fields():
            if op.nested:
                for sub in dataclasses.fields(op.config):
                    out.append(f"| `augment.{key}.{sub.name}` | {_value(_default(sub))} | `{op_name}` |")
            else:
                out.append(f"| `augment.{key}` | {_value(getattr(spec.cfg(op_name), key))} | `{op_name}` |")
    for key in NORM_FIELDS:
        out.append(f"| `augment.{key}` | {_value(getattr(spec, key))} | normalisation |")
    for key, default in config.AUGMENT_EXTRA_KEYS.items():
        out.append(f"| `augment.{key}` | {_value(default)} | view set |")
    for field in dataclasses.fields(config.MultiCropConfig):
        out.append(f"| `augment.multicrop.{field.name}` | {_value(_default(field))} | multi-crop |")

    out += ["", "## [method]", "", "`method.name` picks a registered method; the other keys are its options.", ""]
    for name in sorted(METHODS):
        doc = (inspect.getdoc(METHODS[name]) or "").split("\n\n")[0].replace("\n", " ")
        out += [f"### `method.name = \"{name}\"`", "", doc, "", "| key | default |", "|---|---|"]
        for key, default in method_options(name).items():
            shown = "(required)" if default is inspect.Parameter.empty else _value(default)
            out.append(f"| `method.{key}` | {shown} |")
        out.append("")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    """argparse help text as a Markdown table cell (no link syntax, no column breaks)."""
    text = text.replace("%%", "%")
    for char in "[]|*_":
        text = text.replace(char, "\\" + char)
    return text


def cli_markdown() -> str:
    """The command-line reference page (Markdown): every `ssl-aug` command's --help."""
    from ssl_aug.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: fix it for a stable page
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {a.dest: a.help for a in commands._choices_actions}
    out = ["# Command line", "",
           "`ssl-aug COMMAND ...` (or `python -m ssl_aug COMMAND ...`). Every user error is one line "
           "`ssl-aug: error: ...` with exit code 2. This page is generated from the parsers when the site "
           "is built.", "", "| command | does |", "|---|---|"]
    out += [f"| [`{name}`](#{name}) | {_cell(helps.get(name) or '')} |" for name in commands.choices]
    for name, sub in commands.choices.items():
        out += ["", f"## {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"


def on_files(files, config):
    """mkdocs hook: add the generated pages."""
    from mkdocs.structure.files import File

    for path, text in ((RECIPE_KEYS, recipe_keys_markdown()), (CLI, cli_markdown())):
        files.append(File.generated(config, path, content=text))
    return files


if __name__ == "__main__":
    print(recipe_keys_markdown())
    print(cli_markdown())
