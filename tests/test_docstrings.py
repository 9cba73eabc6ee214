"""Every public module, class, function and method of the package says what it does."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rn50"


def undocumented(root: Path) -> list[str]:
    """'file: name' of each public module, class, function and method without a docstring."""
    missing = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(root.parent)
        if path.name != "__init__.py" and not ast.get_docstring(tree):
            missing.append(f"{rel}: (module)")
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name[0] == "_":
                continue
            if not ast.get_docstring(node):
                missing.append(f"{rel}: {node.name}")
            if isinstance(node, ast.ClassDef):
                missing += [
                    f"{rel}: {node.name}.{m.name}" for m in node.body
                    if isinstance(m, ast.FunctionDef) and m.name[0] != "_"
                    and not ast.get_docstring(m)
                ]
    return missing


def test_the_check_finds_a_missing_docstring(tmp_path):
    pkg = tmp_path / "rn50"
    pkg.mkdir()
    (pkg / "a.py").write_text('"""A."""\n\ndef f():\n    """F."""\n\n\nclass C:\n    def m(self):\n'
                              '        pass\n\n    def _private(self):\n        pass\n')
    (pkg / "b.py").write_text("def g():\n    pass\n")
    assert undocumented(pkg) == ["rn50/a.py: C", "rn50/a.py: C.m", "rn50/b.py: (module)",
                                 "rn50/b.py: g"]


def test_every_public_name_has_a_docstring():
    assert undocumented(SRC) == []
