"""Import CompressAI without its datasets: the layers and entropy models in a second, not ~25 seconds.

``import compressai`` runs a package ``__init__`` that imports every subpackage, among them the point-cloud
datasets and transforms, which import torch_geometric (and through it torch._dynamo): about 25 of the 30
seconds a fresh process spent importing the codec, for modules a codec never uses. :func:`install` puts
CompressAI's packages in ``sys.modules`` with their ``__init__`` deferred. The first attribute a package is
asked for runs its real ``__init__`` without the imports listed in :data:`DEFERRED` (CompressAI's own code,
its entropy-coder selection included); an attribute that needs one of those imports runs them too, so
anything that asks for ``compressai.zoo`` or ``compressai.datasets`` gets the real modules, imported then.
Submodules (``compressai.entropy_models``, ``compressai.layers``, ...) are imported the ordinary way.

``compressai.entropy_models`` imports ``scipy.stats`` (about a second) for one call, the normal quantile in
``GaussianConditional.update()``, which loading a codec with its stored tables never makes: ``scipy.stats``
is registered lazily (``importlib.util.LazyLoader``), so it is imported when first used.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import threading
import types

#: package -> its submodules whose import is deferred until something asks for them.
DEFERRED = {
    "compressai": ("datasets", "losses", "optimizers", "transforms", "zoo"),
    "compressai.registry": ("transforms",),
    "compressai.models": ("pointcloud",),
}
_LOCK = threading.RLock()


class DeferredPackage(types.ModuleType):
    """A package whose ``__init__`` runs on first attribute access, its heavy imports only when needed."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        with _LOCK:
            state = self.__dict__
            if not state.get("_latentzip_ran"):
                state["_latentzip_ran"] = True
                _run(self, state["_latentzip_light"])
            if name not in state and state.get("_latentzip_rest") is not None:
                rest, state["_latentzip_rest"] = state["_latentzip_rest"], None
                _run(self, rest)
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def install() -> None:
    """Register CompressAI's packages with deferred ``__init__``s, unless CompressAI is already imported
    (then there is nothing to save) or not installed."""
    with _LOCK:
        if "compressai" in sys.modules:
            return
        if not any(name in sys.modules for name in LAZY) and _LazyFinder not in sys.meta_path:
            sys.meta_path.insert(0, _LazyFinder)
        for name, heavy in DEFERRED.items():
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None or spec.submodule_search_locations is None:
                return
            module = DeferredPackage(name)
            module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
            module.__path__, module.__package__ = list(spec.submodule_search_locations), name
            source = ast.parse(spec.loader.get_source(name), spec.origin)
            light, rest = _split(source, name, set(heavy))
            module.__dict__.update(_latentzip_light=light, _latentzip_rest=rest, _latentzip_ran=False)
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)


class _LazyFinder:
    """On the first import of a name in :data:`LAZY`, a spec whose loader runs the module on its first
    attribute access (``importlib.util.LazyLoader``); then steps aside. A finder rather than a module put in
    ``sys.modules`` up front: importing torch walks the modules already loaded, which would run it at once."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname not in LAZY:
            return None
        with _LOCK:
            if cls in sys.meta_path:
                sys.meta_path.remove(cls)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


#: Modules CompressAI imports at the top and uses only in calls a codec with stored tables never makes.
LAZY = ("scipy.stats",)


def _split(tree: ast.Module, package: str, heavy: set[str]) -> tuple[types.CodeType, types.CodeType]:
    """The package's ``__init__`` without the imports of ``heavy`` submodules, and those imports."""
    keep, rest = [], []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            absolute = node.level == 0 and node.module == package
            relative = node.level == 1 and node.module and node.module.split(".")[0] in heavy
            if absolute:
                names = [alias for alias in node.names if alias.name in heavy]
                if names:
                    rest.append(ast.ImportFrom(module=node.module, names=names, level=0))
                    node = ast.ImportFrom(module=node.module, level=0,
                                          names=[alias for alias in node.names if alias.name not in heavy])
                    if not node.names:
                        continue
            elif relative:
                rest.append(node)
                continue
        keep.append(node)
    compile_ = lambda body: compile(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[])),  # noqa: E731
                                    f"<{package} __init__>", "exec")
    return compile_(keep), compile_(rest)


def _run(module: types.ModuleType, code: types.CodeType) -> None:
    exec(code, module.__dict__)  # noqa: S102 - the package's own __init__ code, as its import would run it
