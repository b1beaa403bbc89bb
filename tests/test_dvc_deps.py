"""dvc.yaml deps derived from the code, so they cannot drift: each `python -m stages.X` stage
must list every pipeline/ and stages/ module that stages.X imports (else a change there leaves
stale outputs) and no module it does not import (else needless reruns).

Imports are read from the source (ast), not from sys.modules after importing the stage: that
also sees imports inside functions (a lazily imported module still decides the output), and
takes milliseconds instead of a torch import per stage (20-60 s on our 2 cores)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
STAGE_CMD = re.compile(r"^\s*python -m (stages\.\w+)(\s|$)")
DATA_ROOT = "${data.root}"
# A stage given the manifest (--manifest) that loads images (pipeline/data/images.py) reads them
# under data.root, the root the manifest's paths are relative to: a changed image must rerun it.
IMAGE_LOADER = "pipeline/data/images.py"
# Params keys that name input files/dirs of the stages listing their section.
INPUT_PARAM_KEYS = ("root", "images_dir")


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(name: str, path: Path) -> set[str]:
    """Modules named by the import statements anywhere in the file (function bodies included),
    except under `if TYPE_CHECKING:`, which never runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pipeline import metrics`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def _has_code(path: Path) -> bool:
    """A package __init__ holding only a docstring cannot change a stage's output."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return not all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def stage_modules(module: str) -> set[str]:
    """Repo-relative files of the pipeline/stages modules `module` imports, transitively."""
    todo, seen, files = [module], set(), set()
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in PACKAGES:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:  # `from pipeline.x import some_function`: not a module
            continue
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b runs a/__init__
        todo.extend(_imported_names(name, path))
        if path.name != "__init__.py" or _has_code(path):
            files.add(path.relative_to(ROOT).as_posix())
    return files


def _covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep.rstrip("/") + "/")


def _code_files(directory: str) -> set[str]:
    paths = [p for p in (ROOT / directory).rglob("*.py") if "__pycache__" not in p.parts]
    return {p.relative_to(ROOT).as_posix() for p in paths if p.name != "__init__.py" or _has_code(p)}


def _collapse(files: list[str], needed: set[str]) -> list[str]:
    """Files -> their package directory when the stage needs every module in it (one dep line)."""
    out = set(files)
    for package in sorted({str(Path(f).parent) for f in files if f.count("/") > 1}):
        modules = _code_files(package)
        if modules <= needed and modules <= out:
            out = (out - modules) | {package}
    return sorted(out)


def _input_params(spec: dict, params: dict) -> list[str]:
    sections = [s for s in spec.get("params", []) if isinstance(s, str) and isinstance(params.get(s), dict)]
    return [f"${{{s}.{key}}}" for s in sections for key in INPUT_PARAM_KEYS if params[s].get(key)]


def deps_problems(stages: dict, params: dict | None = None) -> dict[str, dict[str, list[str]]]:
    """Per stage: the deps lines to add and to remove."""
    problems = {}
    for stage, spec in stages.items():
        cmd = " ".join(str(spec.get("cmd", "")).split())
        match = STAGE_CMD.match(cmd)
        if not match:
            continue
        deps = [str(d) for d in spec.get("deps", [])]
        needed = stage_modules(match.group(1))
        code_deps = [d for d in deps if d.split("/")[0] in PACKAGES]
        # A directory dep is right only when the stage imports every module under it.
        kept = [d for d in code_deps if d in needed or ((ROOT / d).is_dir() and set() < _code_files(d) <= needed)]
        remove = sorted(set(code_deps) - set(kept))
        add = _collapse([f for f in needed if not any(_covers(d, f) for d in kept)], needed)
        inputs = _input_params(spec, params or {})
        if "--manifest" in cmd.split() and IMAGE_LOADER in needed:
            inputs.append(DATA_ROOT)
        add += [i for i in dict.fromkeys(inputs) if i not in deps]
        if add or remove:
            problems[stage] = {"add": add, "remove": remove}
    return problems


def _explain(problems: dict[str, dict[str, list[str]]]) -> str:
    lines = ["dvc.yaml deps disagree with what the stages import; edit each stage's deps:"]
    for stage, change in problems.items():
        lines.append(f"  stage {stage!r}:")
        lines += [f"    add:    - {d}" for d in change["add"]]
        lines += [f"    remove: - {d}" for d in change["remove"]]
    return "\n".join(lines)


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def test_every_stage_lists_exactly_the_modules_it_imports():
    stages = _stages()
    assert any(STAGE_CMD.match(" ".join(str(s["cmd"]).split())) for s in stages.values())
    problems = deps_problems(stages, _params())
    assert not problems, _explain(problems)


def _exact_spec(stage: str, *extra: str, args: str = "--manifest m") -> dict:
    """A stage spec whose code deps are exactly what the scan finds (independent of dvc.yaml)."""
    deps = sorted(stage_modules(f"stages.{stage}")) + list(extra)
    return {"cmd": f"python -m stages.{stage} {args} --out x", "deps": deps}


def test_checker_flags_missing_and_needless_deps():
    spec = _exact_spec("vocab", "data/manifest.parquet")
    assert "pipeline/data/vocab.py" in spec["deps"] and deps_problems({"vocab": spec}) == {}
    spec["deps"] = [d for d in spec["deps"] if d != "pipeline/data/vocab.py"] + ["pipeline/data/scenes.py"]
    assert deps_problems({"vocab": spec}) == {
        "vocab": {"add": ["pipeline/data/vocab.py"], "remove": ["pipeline/data/scenes.py"]}}
    message = _explain(deps_problems({"vocab": spec}))
    assert "add:    - pipeline/data/vocab.py" in message and "remove: - pipeline/data/scenes.py" in message
    # A directory dep covers the modules under it, but only if the stage imports all of them.
    spec["deps"] = [d for d in spec["deps"] if not d.startswith("pipeline/data/formats/")] + ["pipeline/data/formats"]
    spec["deps"] = [d for d in spec["deps"] if d != "pipeline/data/scenes.py"] + ["pipeline/data/vocab.py"]
    assert deps_problems({"vocab": spec}) == {}
    scenes = _exact_spec("scenes", "pipeline/data/formats")
    assert deps_problems({"scenes": scenes}) == {"scenes": {"add": [], "remove": ["pipeline/data/formats"]}}
    whole = deps_problems({"scenes": {"cmd": scenes["cmd"], "deps": ["pipeline", "stages"]}})["scenes"]
    assert whole["remove"] == ["pipeline", "stages"]
    # every imported module is asked for, itself or as the package directory it fills completely
    covered = {m for m in stage_modules("stages.scenes") if any(m == a or m.startswith(a + "/") for a in whole["add"])}
    assert covered == set(stage_modules("stages.scenes"))
    assert all(any(m == a or m.startswith(a + "/") for m in covered) for a in whole["add"])
    assert deps_problems({"other": {"cmd": "dvc exp show", "deps": ["pipeline/data/scenes.py"]}}) == {}


def test_stages_reading_their_input_dirs_depend_on_them():
    assert deps_problems({"features": _exact_spec("features")}) == {"features": {"add": [DATA_ROOT], "remove": []}}
    assert deps_problems({"features": _exact_spec("features", DATA_ROOT)}) == {}
    assert deps_problems({"vocab": _exact_spec("vocab")}) == {}  # reads captions from the manifest only
    caption = {**_exact_spec("caption", args="--model m"), "params": ["caption"]}
    params = {"caption": {"images_dir": "data/sample_images", "beam_size": 3}}
    assert deps_problems({"caption": caption}, params) == {"caption": {"add": ["${caption.images_dir}"], "remove": []}}
    caption["deps"].append("${caption.images_dir}")
    assert deps_problems({"caption": caption}, params) == {}


def test_a_wholly_needed_package_is_suggested_as_one_directory_line():
    spec = _exact_spec("vocab")
    spec["deps"] = [d for d in spec["deps"] if not d.startswith("pipeline/data/formats/")]
    assert deps_problems({"vocab": spec})["vocab"]["add"] == ["pipeline/data/formats"]


def test_import_scan_sees_lazy_imports_and_skips_type_checking(tmp_path, monkeypatch):
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "__init__.py").write_text('"""docstring only"""\n')
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import c\n"
                                  "def f():\n    from .b import g\n    return g\n")
    (package / "b.py").write_text("def g():\n    return 1\n")
    (package / "c.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert stage_modules("pipeline.a") == {"pipeline/a.py", "pipeline/b.py"}
