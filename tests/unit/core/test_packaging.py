"""The package is light and locked (issue 16): the daemon loads what it runs, every import is
declared, SQLAlchemy and pgserver live in extras, and constraints.txt pins every dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).parents[3]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# What only `sandbox` / `demo` (and the tests) run; the daemon must never load them.
OPTIONAL_MODULES = (
    "cdc_invoice.sandbox",
    "cdc_invoice.demo",
    "cdc_invoice.harness",
    "cdc_invoice.db.embedded",
    "cdc_invoice.commands.loadtest",
)
EXTRA_ONLY = ("sqlalchemy", "pgserver")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_daemon_import_path_loads_no_sandbox_sqlalchemy_or_pgserver() -> None:
    done = run_python(
        "import sys, cdc_invoice.cli, cdc_invoice.daemon.runner\n"
        "from cdc_invoice.cli import main\n"
        "main.get_command(None, 'run')\n"  # the command the systemd unit starts
        "print('\\n'.join(sorted(sys.modules)))"
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "cdc_invoice.daemon.runner" in loaded  # the probe saw the daemon's modules
    unwanted = [
        m for m in loaded if m.split(".")[0] in EXTRA_ONLY or m.startswith(OPTIONAL_MODULES)
    ]
    assert unwanted == []


def test_the_sandbox_command_loads_when_named() -> None:
    done = run_python(
        "import sys\nfrom cdc_invoice.cli import main\n"
        "assert main.get_command(None, 'sandbox').name == 'sandbox'\n"
        "print('sqlalchemy' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_without_the_sandbox_extra_the_command_says_what_to_install() -> None:
    # A server installed without extras: SQLAlchemy cannot be imported.
    done = run_python(
        "import sys, importlib.abc\n"
        "class NoSqlAlchemy(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'sqlalchemy':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoSqlAlchemy())\n"
        "from cdc_invoice.cli import main\n"
        "main(['sandbox', '--app-key', 'k'], prog_name='cdc-invoice')\n"
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "needs the module 'sqlalchemy'" in done.stderr
    assert "fix: pip install 'cdc-invoice[sandbox]'" in done.stderr


def third_party_imports(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != "cdc_invoice" and n not in sys.stdlib_module_names}


def declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    found = packages_distributions()
    return {m: {canonicalize_name(d) for d in found.get(m, [m])} for m in modules}


def test_every_import_of_the_package_is_declared_and_nothing_else() -> None:
    pkg = REPO / "cdc_invoice"
    optional = [
        p
        for p in pkg.rglob("*.py")
        if ".".join(p.relative_to(REPO).with_suffix("").parts).startswith(OPTIONAL_MODULES)
    ]
    core = [p for p in pkg.rglob("*.py") if p not in optional]
    deps = declared(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    with_extras = deps | declared(extras["sandbox"]) | declared(extras["demo"])

    undeclared = {m: d for m, d in distributions(third_party_imports(core)).items() if not d & deps}
    assert undeclared == {}, "imported by the daemon's modules but not in dependencies"
    undeclared = {
        m: d for m, d in distributions(third_party_imports(optional)).items() if not d & with_extras
    }
    assert undeclared == {}, "imported by the sandbox/demo but in no extra"
    assert not deps & set(EXTRA_ONLY), "SQLAlchemy and pgserver belong in the extras"
    # Declared but imported nowhere (sniffio was, for httpcore, which no longer sends requests).
    imported = set().union(*distributions(third_party_imports(core + optional)).values())
    unused = deps - imported - {"psycopg-pool"}  # psycopg_pool is imported as psycopg_pool
    assert unused == set()


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        spec = line.split("#")[0].strip()
        if spec:
            name, version = spec.split("==")
            pins[canonicalize_name(name)] = version
    wanted = list(PYPROJECT["project"]["dependencies"])
    for group in PYPROJECT["project"]["optional-dependencies"].values():
        wanted += group
    problems = []
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "cdc-invoice":
            continue  # an extra naming another extra
        if name not in pins:
            problems.append(f"{name} is not in constraints.txt: run `make lock`")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside {req.specifier}: run `make lock`")
    assert problems == []
