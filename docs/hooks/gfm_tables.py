"""Pages read the same on GitHub and on the site: a pipe inside a code span in a table row is written
`\\|` (GitHub's tables need the escape there and drop the backslash), while Python-Markdown's tables
already keep code spans whole and would show the backslash. This MkDocs hook drops it before rendering."""

from __future__ import annotations

import re

_CODE = re.compile(r"`[^`\n]*`")


def unescape_table_code_pipes(markdown: str) -> str:
    out, fence = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and line.lstrip().startswith("|"):
            line = _CODE.sub(lambda m: m.group(0).replace("\\|", "|"), line)
        out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files):  # the MkDocs hook
    return unescape_table_code_pipes(markdown)
