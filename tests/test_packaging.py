"""The light install: `import adaptim` needs torch and numpy only; the lab is an extra.

`pip install adaptim` installs the optimizers; `pip install 'adaptim[lab]'` adds
the lab and its `adaptim` command, whose launcher says what to install when
the lab is missing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from adaptim import _launcher

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "adaptim"

# The lab extra's distributions and the top-level module each installs.
LAB_MODULES = {
    "scipy": "scipy",
    "scikit-learn": "sklearn",
    "mlxtend": "mlxtend",
    "mnist1d": "mnist1d",
    "SQLAlchemy": "sqlalchemy",
    "optuna": "optuna",
    "rich": "rich",
    "typer": "typer",
    "matplotlib": "matplotlib",
}


def project() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def requirement_name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip()


def test_the_package_needs_torch_and_numpy_only() -> None:
    names = {requirement_name(r) for r in project()["dependencies"]}
    assert names == {"torch", "numpy"}


def test_the_lab_extra_is_the_table_above() -> None:
    names = {requirement_name(r) for r in project()["optional-dependencies"]["lab"]}
    assert names == set(LAB_MODULES)


def test_only_the_lab_and_the_cli_import_lab_dependencies() -> None:
    # The command, its launcher (which imports it once the lab is known to be there)
    # and the modules of `adaptim compare`, `reproduce` and `lr-find`, which only it imports.
    command = {
        Path("cli.py"),
        Path("_launcher.py"),
        Path("_compare_cli.py"),
        Path("_reproduce_cli.py"),
        Path("_lr_find_cli.py"),
    }
    # adaptim.lr_find, loaded on first use, is the lab's range test: it needs torch only.
    torch_only = {(Path("__init__.py"), "adaptim.lab.lr_find")}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "lab" or relative in command:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if (relative, module) in torch_only:
                    continue
                if top in LAB_MODULES.values() or module.startswith(("adaptim.lab", "adaptim.cli")):
                    offenders.append(f"{relative}:{node.lineno} imports {module}")
    assert offenders == []


def test_import_adaptim_loads_no_lab_module() -> None:
    watched = [*LAB_MODULES.values(), "adaptim.lab", "adaptim.cli"]
    code = (
        "import sys, adaptim, adaptim.numpy, adaptim.algorithms, adaptim.flavors\n"
        f"print(sorted(m for m in {watched!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_launcher_without_the_lab_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_launcher, "missing_lab_requirements", lambda: ["typer", "scipy"])
    with pytest.raises(SystemExit) as exit_info:
        _launcher.main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert "pip install 'adaptim[lab]'" in lines[0]
    assert "typer, scipy" in lines[0]


def installed_with_lab_extra() -> bool:
    try:
        extras = metadata.metadata("adaptim").get_all("Provides-Extra") or []
    except metadata.PackageNotFoundError:
        return False
    return "lab" in extras


def test_launcher_reads_the_lab_extra_from_the_installed_metadata() -> None:
    # The README's test command installs '.[lab,test]'; an older install must be redone.
    assert installed_with_lab_extra(), "reinstall adaptim: pip install -e '.[lab,test]'"
    assert {name.lower() for name in _launcher.lab_requirements()} == {
        name.lower() for name in LAB_MODULES
    }
    assert _launcher.missing_lab_requirements() == []


def modules_loaded_by(code: str, *argv: str) -> set[str]:
    """The heavy modules ``code`` (run with ``argv``) leaves in ``sys.modules``."""
    watched = ["torch", "scipy", "sklearn", "optuna", "sqlalchemy", "matplotlib", "adaptim.torch"]
    probe = (
        "import sys\n"
        f"sys.argv = ['adaptim', *{list(argv)!r}]\n"
        f"try:\n    {code}\nexcept SystemExit:\n    pass\n"
        f"print('loaded:' + ','.join(m for m in {watched!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    last = out.splitlines()[-1]
    assert last.startswith("loaded:"), out
    return set(filter(None, last.removeprefix("loaded:").split(",")))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["compare", "--help"],
        ["compare", "--seeds", "many"],  # an argument error
    ],
)
def test_help_and_argument_errors_import_neither_torch_nor_the_lab(argv: list[str]) -> None:
    # Importing torch takes over a second; `adaptim --help` must answer before it would.
    loaded = modules_loaded_by("from adaptim._launcher import main; main()", *argv)
    assert loaded == set()


def test_the_optimizers_load_on_first_use() -> None:
    assert modules_loaded_by("import adaptim") == set()
    import adaptim
    import adaptim.torch

    for name in adaptim.__all__:
        assert hasattr(adaptim, name), name
    assert adaptim.Adam is adaptim.torch.Adam
    assert adaptim.OPTIMIZERS is adaptim.torch.OPTIMIZERS
    assert set(dir(adaptim)) >= set(adaptim.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Adma'"):
        _ = adaptim.Adma  # type: ignore[attr-defined]
