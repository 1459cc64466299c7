"""The layering of the packages: renderer/ is the library, jobs/ (the `render` command) and cluster/ (Ray Jobs)
sit on top of it. The library never reaches up, and the command line starts without the heavy libraries, so
`render --help` and the table checks stay fast and work where torch or Ray are broken."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENDERER = ROOT / "renderer"
# the layers above the library, and the command-line toolkit that belongs to them
ABOVE_RENDERER = {"jobs", "cluster", "click"}
# what the command line must not pay for before it has parsed its arguments
HEAVY = ("torch", "ray", "pyarrow")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path):
    """(line, absolute module name) of every import in the file, at any depth (lazy imports inside functions
    included), relative imports resolved against the file's package; also importlib.import_module("x") and
    __import__("x") with a literal name."""
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                # a relative import climbing out of the top package cannot be resolved: report it as is
                if node.level - 1 >= len(base):
                    yield node.lineno, "." * node.level + (node.module or "")
                    continue
                base = ".".join(base[:len(base) - (node.level - 1)])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            yield node.lineno, name
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def test_renderer_imports_nothing_from_the_layers_above():
    files = sorted(RENDERER.rglob("*.py"))
    assert len(files) > 10, "renderer/ not found where the test expects it"
    offenders = [f"{path.relative_to(ROOT)}:{line}: imports {name}"
                 for path in files for line, name in _imported(path)
                 if name.startswith(".") or name.partition(".")[0] in ABOVE_RENDERER]
    assert not offenders, "renderer/ must not import jobs, cluster or click:\n" + "\n".join(offenders)


def _heavy_loaded(code: str) -> list[str]:
    """Run `code` in a fresh interpreter at the repository root; the heavy top-level packages it left loaded."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.partition('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_command_line_loads_no_heavy_library():
    assert _heavy_loaded("import jobs.cli") == []


def test_render_help_loads_no_heavy_library():
    code = ("from jobs.cli import main\n"
            "for args in (['--help'], ['run', '--help'], ['submit', '--help']):\n"
            "    try:\n"
            "        main(args, prog_name='render')\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code == 0, (args, exc.code)\n")
    assert _heavy_loaded(code) == []
