"""The command reference, generated from the typer app at build time so it cannot drift from the code.

A MkDocs hook (mkdocs.yml: `hooks: [docs/hooks/cli_reference.py]`): on `cli.md` it replaces the marker
line `<!-- cli-reference -->` with every command of `edgebus.cli:app`, walked from its click command tree
(sub-groups such as `cv classify` and `train segment` included): usage, help, arguments and options,
as `edgebus COMMAND --help` shows them. Importing `edgebus.cli` loads no TensorFlow.

`render()` and `command_paths()` are plain functions, so tests call them without MkDocs.
"""

from __future__ import annotations

import html
import inspect
import re

MARKER = "<!-- cli-reference -->"
PAGE = "cli.md"

_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|])")


def _root(app=None):
    import typer

    if app is None:
        from edgebus.cli import app
    return typer.main.get_command(app)


def _subcommands(command, ctx):
    """The sub-commands of a group, in the order `--help` lists them (none for a plain command)."""
    if not hasattr(command, "commands"):
        return []
    names = command.list_commands(ctx) if hasattr(command, "list_commands") else list(command.commands)
    return [(name, command.get_command(ctx, name) if hasattr(command, "get_command") else command.commands[name])
            for name in names]


def walk(app=None):
    """Yield (context, command) for the root and every command below it, depth first."""
    root = _root(app)

    def visit(command, ctx):
        yield ctx, command
        for name, sub in _subcommands(command, ctx):
            if sub is None:
                continue
            yield from visit(sub, sub.context_class(sub, info_name=name, parent=ctx))

    yield from visit(root, root.context_class(root, info_name="edgebus"))


def command_paths(app=None) -> list[str]:
    """Every command's full path ("edgebus", "edgebus predict", "edgebus cv classify", ...)."""
    return [ctx.command_path for ctx, _ in walk(app)]


def _text(s: str) -> str:
    """Help prose as Markdown text, as `--help` shows it: rich's escaped bracket (`\\[`) unescaped, then
    HTML and Markdown syntax escaped, so it shows as typed."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(s.replace("\\[", "["), quote=False))


def _paragraphs(help_text: str | None) -> list[str]:
    if not help_text:
        return []
    text = inspect.cleandoc(help_text).replace("\b", "")
    return [" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def render(app=None) -> str:
    """The whole reference as Markdown: one section per command, groups before their commands."""
    out = []
    entries = list(walk(app))
    out.append("| command | what it does |\n|---|---|")
    for ctx, command in entries[1:]:
        if getattr(command, "hidden", False):
            continue
        summary = _paragraphs(command.help)
        first = summary[0].split(". ")[0].rstrip(".") if summary else ""
        out[-1] += f"\n| [`{ctx.command_path}`](#{_anchor(ctx.command_path)}) | {_text(first)} |"
    for ctx, command in entries:
        depth = ctx.command_path.count(" ")
        level = "#" * min(2 + depth, 4)
        part = [f"{level} {ctx.command_path} {{#{_anchor(ctx.command_path)}}}"]
        if getattr(command, "hidden", False):
            part.append("*(hidden)*")
        part.append(f"```text\n{ctx.get_usage()}\n```")
        part.extend(_text(p) for p in _paragraphs(command.help))
        if getattr(command, "epilog", None):
            part.extend(_text(p) for p in _paragraphs(command.epilog))
        subs = [(name, sub) for name, sub in _subcommands(command, ctx) if sub is not None]
        if subs:
            part.append("**Commands**\n\n" + "\n".join(
                f"- [`{ctx.command_path} {name}`](#{_anchor(ctx.command_path + ' ' + name)})" for name, sub in subs))
        args, opts = [], []
        for param in command.params:
            record = param.get_help_record(ctx)
            if record is None:  # hidden
                continue
            names, help_text = record
            line = f"- `{names}`" + (f": {_text(' '.join(help_text.split()))}" if help_text else "")
            (args if param.param_type_name == "argument" else opts).append(line)
        if command.params is not None:
            help_option = command.get_help_option(ctx)
            if help_option is not None and help_option not in command.params:
                record = help_option.get_help_record(ctx)
                if record:
                    opts.append(f"- `{record[0]}`: {_text(record[1])}")
        if args:
            part.append("**Arguments**\n\n" + "\n".join(args))
        if opts:
            part.append("**Options**\n\n" + "\n".join(opts))
        out.append("\n\n".join(part))
    return "\n\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files):  # the MkDocs hook
    if page.file.src_uri == PAGE:
        if MARKER not in markdown:
            raise ValueError(f"docs/{PAGE} lost its marker line {MARKER}")
        return markdown.replace(MARKER, render())
    return markdown
