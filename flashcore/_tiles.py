"""The kernels' tile tables (csrc/tiles/*.h), read as text: the shape advisor's source of truth.

Each kernel's tile configuration lives in one X-macro header that its C++ code includes:

    // columns: head_dim, block_m, block_n, waves, waves_per_simd
    #define FLASHCORE_TILES_GFX942_FWD(X) \\
      X(64, 128, 64, 4, 3) \\
      ...

one `// columns:` line naming the X(...) arguments, then `#define FLASHCORE_TILES_<NAME>(X)` with one row of
integers per head dim. This module finds the headers (the installed package's copy, flashcore/tiles/, which
setup.py's build_py writes; else the repository's csrc/tiles/ in a checkout) and parses them. A kernel whose
table is absent from the build (not written yet) is reported as missing, never filled in with made-up numbers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PACKAGE_TILES = Path(__file__).resolve().parent / "tiles"  # installed: setup.py copies csrc/tiles/*.h here
CHECKOUT_TILES = Path(__file__).resolve().parent.parent / "csrc" / "tiles"  # development checkout
TILES_ENV = "FLASHCORE_TILES_DIR"  # override (tests, or a tree being edited elsewhere)

_COLUMNS = re.compile(r"^[ \t]*//[ \t]*columns:[ \t]*(?P<cols>.*?)[ \t]*$", re.M)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+FLASHCORE_TILES_(?P<name>[A-Z0-9_]+)\(X\)", re.M)
_ROW = re.compile(r"\bX\((?P<args>[^()]*)\)")
_INT = re.compile(r"^[+-]?\d+$")


class TileTableError(ValueError):
    """A tile table exists but does not follow the format (which file, which line, what is wrong)."""


class TileTableMissing(LookupError):
    """No tile table for a kernel in this build (its kernel has not landed)."""


@dataclass(frozen=True)
class TileTable:
    """One kernel's tiles: `rows[head_dim]` maps each column name to its integer."""
    name: str  # the macro suffix, e.g. "GFX942_FWD"
    path: str
    columns: tuple
    rows: dict

    @property
    def head_dims(self) -> tuple:
        return tuple(sorted(self.rows))

    def row(self, head_dim: int) -> dict:
        if head_dim not in self.rows:
            raise ValueError(f"head_dim: {head_dim} has no tile in {self.name} ({Path(self.path).name}); the kernel "
                             f"has head dims {', '.join(map(str, self.head_dims))}")
        return self.rows[head_dim]


def parse_table(text: str, path: str = "<text>", required: tuple = ("head_dim",)) -> TileTable:
    """Parse one tile header's text. Raises TileTableError naming the file and line of the problem."""
    columns = list(_COLUMNS.finditer(text))
    defines = list(_DEFINE.finditer(text))
    if len(columns) != 1:
        raise TileTableError(f"{path}: expected exactly one '// columns: ...' line, found {len(columns)}")
    if len(defines) != 1:
        raise TileTableError(f"{path}: expected exactly one '#define FLASHCORE_TILES_<NAME>(X)', found {len(defines)}")
    cols = tuple(c.strip() for c in columns[0]["cols"].split(","))
    if any(not re.fullmatch(r"[a-z_][a-z0-9_]*", c) for c in cols) or len(set(cols)) != len(cols):
        raise TileTableError(f"{path}: the columns line must name distinct lower-case identifiers, got {cols}")
    missing = [c for c in required if c not in cols]
    if missing:
        raise TileTableError(f"{path}: columns {cols} lack {missing}")
    define = defines[0]
    if columns[0].start() > define.start():
        raise TileTableError(f"{path}: the '// columns:' line must come before the #define")
    # The macro body: the #define line and every line continued from it by a trailing backslash.
    lines = text[define.start():].split("\n")
    body_lines = [lines[0]]
    while body_lines[-1].rstrip().endswith("\\") and len(body_lines) < len(lines):
        body_lines.append(lines[len(body_lines)])
    body = "\n".join(body_lines)[define.end() - define.start():]
    line0 = text.count("\n", 0, define.start()) + 1
    rows: dict = {}
    for match in _ROW.finditer(body):
        line = line0 + body.count("\n", 0, match.start())
        args = [a.strip() for a in match["args"].split(",")]
        if len(args) != len(cols) or not all(_INT.match(a) for a in args):
            raise TileTableError(f"{path}:{line}: row X({match['args']}) must have {len(cols)} integers ({', '.join(cols)})")
        row = dict(zip(cols, map(int, args)))
        if any(v <= 0 for v in row.values()):
            raise TileTableError(f"{path}:{line}: row X({match['args']}) has a value <= 0")
        if row["head_dim"] in rows:
            raise TileTableError(f"{path}:{line}: head_dim {row['head_dim']} appears twice")
        rows[row["head_dim"]] = row
    if not rows:
        raise TileTableError(f"{path}: FLASHCORE_TILES_{define['name']} has no X(...) rows")
    return TileTable(name=define["name"], path=path, columns=cols, rows=rows)


def tiles_dir(override: Optional[os.PathLike] = None) -> Path:
    """Where the tables are: `override`, $FLASHCORE_TILES_DIR, the installed copy, else the checkout's csrc/tiles."""
    for candidate in (override, os.environ.get(TILES_ENV)):
        if candidate:
            return Path(candidate)
    return PACKAGE_TILES if PACKAGE_TILES.is_dir() else CHECKOUT_TILES


def load(file: str, label: str, required: tuple, directory: Optional[os.PathLike] = None) -> TileTable:
    """The table in `file` (e.g. "sm90_fwd.h"); TileTableMissing says 'no <label> tile table in this build'."""
    path = tiles_dir(directory) / file
    if not path.is_file():
        raise TileTableMissing(f"no {label} tile table in this build ({path} does not exist: that kernel has not "
                               f"landed, so nothing is predicted for it)")
    return parse_table(path.read_text(), str(path), required)
