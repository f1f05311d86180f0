"""Results as rows, rendered in one place. Every benchmark and study hands `publish` a `Section`:
its title, the command and machine that measured it, and its body as paragraphs and tables of
rows. The sections are kept as data in BENCHMARKS.json; BENCHMARKS.md is rendered from that file
alone, whole, by `render` (a test holds the two equal). A rerun replaces its own section (by name)
and leaves the others as they were.

    python -m pipelines.sections                      # render BENCHMARKS.md from BENCHMARKS.json
    python -m pipelines.sections --merge OUT/BENCHMARKS.json   # take in a GPU session's sections
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

if not __package__:  # run as `python pipelines/sections.py`: import the checkout's packages, as `-m` does
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines.common import BENCHMARKS, load_1min, module_of, say

HEADER = (
    "# Benchmarks\n\n"
    "Measured numbers. Each section is written by the script named in its heading and kept, as\n"
    "rows, in BENCHMARKS.json; this file is rendered from that one (`python -m pipelines.sections`).\n"
    "Rerunning a script replaces its section and leaves the others alone."
)


def table(header: list[str], rows: list[list], left: int = 1) -> dict:
    """A table of a section's body: its cells as they are shown, the first `left` columns
    aligned left, the others (numbers) right."""
    return {"header": [str(h) for h in header], "rows": [[str(c) for c in row] for row in rows], "left": left}


@dataclass
class Section:
    """One section of BENCHMARKS.md as data. `blocks` are paragraphs (str, lines joined by "\\n")
    and tables (`table`'s dicts); `settings` are the flags of the run that wrote it."""

    name: str
    title: str
    module: str  # under pipelines/, dotted: "benchmarks.loader"
    command: str
    machine: dict[str, str]
    blocks: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def section(name: str, title: str, module: str, argv, machine: dict, body: list) -> Section:
    """A Section from a script's body: lines (an empty one ends a paragraph) and `table`s. `module`
    is the script's `__name__` or its dotted name under pipelines/; `argv` its flags (None:
    sys.argv's); the machine gets its load average now, at the end of the measurement."""
    module = module_of(module).removeprefix("pipelines.")
    flags = sys.argv[1:] if argv is None else [str(a) for a in argv]
    command = " ".join(["python -m", f"pipelines.{module}", *flags])
    machine = {**machine, "load average (1 min) at end": load_1min()}
    return Section(name, title, module, command, machine, blocks(body))


def blocks(body: list) -> list:
    """A body's paragraphs (its lines up to an empty one, joined) and tables, in order."""
    out, lines = [], []
    for item in [*body, ""]:
        if isinstance(item, dict) or item == "":
            if lines:
                out.append("\n".join(lines))
                lines = []
            if isinstance(item, dict):
                out.append(item)
        else:
            lines.append(item)
    return out


# -- rendering -------------------------------------------------------------------------------
def _table_lines(t: dict) -> list[str]:
    rule = ["---" if i < t["left"] else "---:" for i in range(len(t["header"]))]
    return ["| " + " | ".join(row) + " |" for row in (t["header"], rule, *t["rows"])]


def _joined(blocks: list) -> str:
    return "\n\n".join(b if isinstance(b, str) else "\n".join(_table_lines(b)) for b in blocks)


def body_markdown(body: list) -> str:
    """A body (lines and tables, as `section` takes it) as markdown, its blocks a blank line apart."""
    return _joined(blocks(body))


def markdown(s: Section) -> str:
    """One section as markdown: title, command, machine, then its blocks."""
    return _joined(
        [
            f"## {s.title} (pipelines/{s.module.replace('.', '/')}.py)",
            f"Written by `{s.command}`; rerun it to replace this section.",
            table(["machine", ""], [list(kv) for kv in s.machine.items()], left=2),
            *s.blocks,
        ]
    )


def render(sections: list[Section]) -> str:
    """The whole of BENCHMARKS.md, each section between its `<!-- NAME:start/end -->` markers."""
    marked = [f"<!-- {s.name}:start -->\n{markdown(s)}\n<!-- {s.name}:end -->" for s in sections]
    return "\n\n".join([HEADER, *marked]) + "\n"


# -- BENCHMARKS.json -------------------------------------------------------------------------
def data_file(markdown_file: Path) -> Path:
    """Where the rows of `markdown_file` are kept: beside it, as .json."""
    return markdown_file.with_suffix(".json")


def load(path: Path) -> list[Section]:
    if not path.exists():
        return []
    try:
        return [Section(**s) for s in json.loads(path.read_text())["sections"]]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a file of benchmark sections ({e}); mend it or take it from git") from None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(markdown_file: Path, new: list[Section]) -> None:
    """Put `new` into the data beside `markdown_file` (each in the place of its namesake, or last),
    then render `markdown_file` from all of it. A markdown file without its data beside it is not
    overwritten: it may hold what no rows describe."""
    if markdown_file.suffix != ".md":
        raise SystemExit(f"{markdown_file}: the rendered file must end in .md (its rows go beside it, as .json)")
    path = data_file(markdown_file)
    if markdown_file.exists() and not path.exists() and markdown_file.read_text().strip():
        raise SystemExit(
            f"{markdown_file} has no {path.name} beside it, so rendering would lose what it holds; "
            "write to another --out, or move it aside"
        )
    sections = load(path)
    for s in new:
        at = next((i for i, old in enumerate(sections) if old.name == s.name), None)
        if at is None:
            sections.append(s)
        else:
            sections[at] = s
    _write(path, json.dumps({"sections": [asdict(s) for s in sections]}, indent=1, ensure_ascii=False) + "\n")
    _write(markdown_file, render(sections))


def publish(s: Section, args) -> int:
    """Print a section; unless --no-write, keep it in args.out's data and render args.out anew."""
    s.settings = json.loads(json.dumps({k: v for k, v in vars(args).items() if k != "child"}, default=str))
    print(markdown(s))
    if not args.no_write:
        save(args.out, [s])
        say(f"wrote the {s.name} section of {args.out} (rows in {data_file(args.out)})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=BENCHMARKS, help="the markdown file (its rows: the .json beside it)")
    p.add_argument("--merge", type=Path, nargs="*", default=[], help="BENCHMARKS.json files whose sections to take in")
    args = p.parse_args(argv)
    taken = [s for path in args.merge for s in load(path)]
    if args.merge and not taken:
        raise SystemExit(f"no sections in {', '.join(map(str, args.merge))}")
    save(args.out, taken)
    say(f"rendered {args.out} from {data_file(args.out)}" + (f", taking in {len(taken)} sections" if taken else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
