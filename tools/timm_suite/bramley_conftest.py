"""Run timm's own tests/test_models.py on bramley's timm-registered models (and only on them).

Loaded before timm's test module is imported. It
  1. registers bramley's models with timm (bramley.mobileone / bramley.fastvit register_timm()),
  2. opens timm's name and module filters to them: every ``list_models`` call the test module makes at import
     returns its usual answer restricted to ``bramley_*`` names, and a ``module=`` filter (FEAT_INTER_FILTERS)
     also admits bramley's timm modules (``bramley_mobileone``, ``bramley_fastvit``). exclude_filters,
     name_matches_cfg, pretrained and include_tags are applied by timm itself, unchanged;
  3. deselects tests whose parameters name no bramley model (timm's tests of its own fixed model names).
timm's assertions are untouched.
"""

import timm
import timm.models
from timm.models import _registry

import bramley.fastvit
import bramley.mobileone

BRAMLEY_NAMES = bramley.mobileone.register_timm() + bramley.fastvit.register_timm()
BRAMLEY_MODULES = sorted({_registry._model_to_module[n] for n in BRAMLEY_NAMES})

_list_models = _registry.list_models


def list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False, include_tags=None):
    if module:
        module = [module] if isinstance(module, str) else list(module)
        module = module + BRAMLEY_MODULES
    names = _list_models(
        filter=filter,
        module=module,
        pretrained=pretrained,
        exclude_filters=exclude_filters,
        name_matches_cfg=name_matches_cfg,
        include_tags=include_tags,
    )
    return [n for n in names if n.split(".")[0] in BRAMLEY_NAMES]


timm.list_models = timm.models.list_models = list_models


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = str(params.get("model_name", "")).split(".")[0]
        (keep if name in BRAMLEY_NAMES else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    return [
        f"timm {timm.__version__}; bramley models ({len(BRAMLEY_NAMES)}): {' '.join(BRAMLEY_NAMES)}",
        f"bramley timm modules: {BRAMLEY_MODULES}",
    ]
