"""The structure figures of the closing notes, from the code's own imports (ast): lines per module, the floors of the
import graph (longest chain of nin-internal imports below a module, function-level imports counted), command →
command edges, run-file parse sites, and function-level imports of nin's own modules with and without a reason
(a comment on the import line or the line above).

    python scripts/structure_report.py                 # this checkout
    python scripts/structure_report.py --rev d1305cb   # a commit (read through `git show`)
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from functools import cache
from pathlib import Path

COMMANDS = {"evaluate", "cam", "export", "bench", "sweep", "report", "compare", "plots", "predict", "search",
            "reproduce"}
MODES = {("search", "sweep"), ("reproduce", "report")}  # a mode of a command may use its command
RUN_FILES = ("summary.json", "metrics.jsonl", "config.yaml", "provenance.json", "outcome.json", "failure.json",
             "pruned.json", "overrides.yaml", "restarts.json", "reproduce.json", "multirun.yaml")


def sources(rev: str | None) -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    if rev is None:
        return {p.stem: p.read_text() for p in sorted((root / "src" / "nin_cli").glob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "src/nin_cli/"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split()
    return {Path(n).stem: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=root, capture_output=True, text=True,
                                         check=True).stdout for n in names if n.endswith(".py")}


def imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(nin module imported, line, at function level)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nin_cli."):
            found.append((node.module.split(".")[1], node.lineno, node.col_offset > 0))
        elif isinstance(node, ast.ImportFrom) and node.module == "nin_cli":
            found += [(a.name, node.lineno, node.col_offset > 0) for a in node.names]
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rev", default=None)
    args = parser.parse_args()
    code = sources(args.rev)
    graph = {m: {i for i, _, _ in imports(ast.parse(src)) if i in code and i != m} for m, src in code.items()}

    @cache
    def floor(module: str) -> int:
        return 1 + max((floor(d) for d in graph[module]), default=0)

    lazy = [(m, line, text.splitlines()[line - 1], text.splitlines()[line - 2] if line > 1 else "")
            for m, text in code.items() for i, line, nested in imports(ast.parse(text)) if nested]
    reasoned = [x for x in lazy if "#" in x[2] or x[3].strip().startswith("#")]
    edges = sorted((a, b) for a in graph for b in graph[a] if a in COMMANDS and b in COMMANDS and (a, b) not in MODES)
    parse_sites = {m: sum(src.count(f'"{f}"') + src.count(f"'{f}'") for f in RUN_FILES) for m, src in code.items()}
    print(f"modules {len(code)}, lines {sum(len(s.splitlines()) for s in code.values())}, "
          f"floors {max(floor(m) for m in code)}")
    for m in sorted(code, key=lambda m: -len(code[m].splitlines())):
        print(f"  {m:12s} {len(code[m].splitlines()):5d} lines  floor {floor(m):2d}  run-file names {parse_sites[m]}")
    print(f"command → command edges (modes excepted): {len(edges)} {edges}")
    print(f"modules naming run files: {sum(1 for v in parse_sites.values() if v)}, "
          f"names: {sum(parse_sites.values())}")
    print(f"function-level imports of nin modules: {len(lazy)}, with a reason comment: {len(reasoned)}")


if __name__ == "__main__":
    main()
