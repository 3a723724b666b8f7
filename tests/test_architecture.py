"""The package's shape: what the layer contract (import-linter, run by CI) cannot say."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import miningxr
from miningxr import errors

PACKAGE = Path(miningxr.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` in ``path`` names."""
    if not node.level:
        return node.module or ""
    base = _module_name(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_private_name_of_another(path):
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _imported(path, node)
            if source.startswith("miningxr") and source != me:
                bad += [f"{a.name} from {source}" for a in node.names if _private(a.name)]
                if any(_private(part) for part in source.split(".")):
                    bad.append(f"the private module {source}")
        elif isinstance(node, ast.Import):
            bad += [
                a.name
                for a in node.names
                if a.name.startswith("miningxr") and any(_private(p) for p in a.name.split("."))
            ]
    assert not bad, f"{me} imports private names: {bad}"


def test_no_module_sets_the_matplotlib_backend():
    # a library that calls matplotlib.use() takes the choice from every notebook that imports it
    users = [p.name for p in MODULES if "matplotlib.use(" in p.read_text()]
    assert not users


def test_every_error_is_a_miningxr_error_exported_at_the_top():
    found = {n: c for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, Exception)}
    assert set(found) == set(errors.__all__)
    for name, cls in found.items():
        if issubclass(cls, Warning):  # what can be done, but likely not as meant
            assert issubclass(cls, errors.MiningxrWarning) and issubclass(cls, UserWarning)
        else:
            assert issubclass(cls, errors.MiningxrError) and issubclass(cls, ValueError)
        assert getattr(miningxr, name) is cls, f"miningxr.{name} is not exported"


def test_no_module_defines_an_exception_outside_errors():
    for path in MODULES:
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not bases & {"Exception", "ValueError", "RuntimeError"}, (path.name, node.name)


def test_the_public_api_resolves_with_real_signatures():
    for name in miningxr.__all__:
        obj = getattr(miningxr, name)
        if callable(obj) and not isinstance(obj, type):
            params = inspect.signature(obj).parameters.values()
            kinds = {p.kind for p in params}
            assert not {inspect.Parameter.VAR_POSITIONAL} & kinds, f"miningxr.{name} takes *args"
    assert "store" in inspect.signature(miningxr.train).parameters
    assert "config" in inspect.signature(miningxr.build_unet).parameters
    assert "config" in inspect.signature(miningxr.predict).parameters
    assert (PACKAGE / "py.typed").exists()


def test_without_tensorflow_the_rest_works_and_training_says_what_to_install():
    script = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "import miningxr\n"
        "ds = miningxr.open_landsat((29.0, -26.0, 29.01, -25.99), 2020)\n"
        "assert ds.landsat.shape[0] == 1\n"
        "try:\n"
        "    miningxr.build_unet\n"
        "except miningxr.MissingDependencyError as e:\n"
        "    print('refused:', e)\n"
        "    assert isinstance(e, ImportError)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "pip install 'miningxr[tf]'" in done.stdout


def test_the_version_is_written_once():
    import tomllib

    meta = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    assert miningxr.__version__ == meta["project"]["version"]
    for path in MODULES:
        assert f'"{meta["project"]["version"]}"' not in path.read_text(), path
