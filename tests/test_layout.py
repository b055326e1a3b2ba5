"""The package keeps the shape docs/design.md describes: imports only go down the layers,
no module imports another's private names, and the public API is lazy and uniform."""
import ast
import inspect
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "featviz")
# docs/design.md's layers, bottom up
LAYER = {"errors": 0, "fileio": 0, "model": 1, "targets": 2, "backends": 3, "search": 4,
         "mining": 4, "analysis": 5, "site": 6, "config": 6.5, "cli": 7, "__main__": 8,
         "__init__": 8}


def imports():
    """(module path, imported featviz module, imported names) for every import."""
    for root, _, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(root, f)
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    yield path, "<relative>", []
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("featviz"):
                    yield path, node.module, [a.name for a in node.names]
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.startswith("featviz"):
                            yield path, a.name, []


def layer_of(path_or_module: str) -> tuple[str, float]:
    parts = os.path.relpath(path_or_module, PKG).split(os.sep) if os.sep in path_or_module \
        else path_or_module.split(".")[1:]
    top = parts[0][:-3] if parts[0].endswith(".py") else parts[0]
    return top, LAYER[top]


def test_imports_only_go_down_and_never_take_private_names():
    bad = []
    for path, module, names in imports():
        if module == "<relative>":
            bad.append(f"{path}: relative import")
            continue
        src, dst = layer_of(path), layer_of(module)
        if src[0] != dst[0] and dst[1] >= src[1] and dst[0] not in ("errors", "fileio"):
            bad.append(f"{os.path.relpath(path, ROOT)} imports {module} (up or sideways)")
        own = module.rsplit(".", 1)[-1] == os.path.basename(path)[:-3]
        bad += [f"{os.path.relpath(path, ROOT)} imports private {module}.{n}"
                for n in names if n.startswith("_") and not own]
    assert not bad, "\n".join(bad)


def test_pages_do_not_import_the_audit():
    src = open(os.path.join(PKG, "site", "pages.py"), encoding="utf-8").read()
    assert "analysis" not in src


def test_import_featviz_is_lazy_and_the_api_complete():
    code = ("import sys, featviz; assert 'torch' not in sys.modules, 'torch imported'; "
            "names = ['load_model', 'parse_target', 'parse_targets', 'read_text', 'dream', "
            "'dream_many', 'mine', 'query', 'audit', 'build_gallery', 'FeatvizError', "
            "'DreamConfig', 'DreamResult', 'MineConfig', 'TargetExemplars', 'QueryConfig', "
            "'QueryResult', 'AuditConfig', 'AuditReport', 'GalleryConfig', 'GalleryResult', "
            "'compare', 'CompareConfig', 'CompareResult']; "
            "[getattr(featviz, n) for n in names]; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_every_run_function_takes_handle_targets_config_progress():
    import featviz
    for name in ("dream", "dream_many", "mine", "query", "audit", "build_gallery", "compare"):
        params = inspect.signature(getattr(featviz, name)).parameters
        names = list(params)
        assert names[:3] == ["handle", names[1], "config"], (name, names)
        assert names[1] in ("target", "targets"), (name, names)
        assert params["config"].default is None and params["progress"].default is True
        assert params["progress"].kind is inspect.Parameter.KEYWORD_ONLY, name
