"""Product versions on disk: which versions a product has, which one is served, its card,
and switching the served version.

Layout (REPO the model repository, V a version number, U the version served before V):

    REPO/<product>/config.pbtxt      the ensemble as served: version_policy { specific { versions: [V] } },
                                     each product-private step named with `model_version: V`
    REPO/<product>/V/card.json       the product card of version V
    REPO/<product>/V/model_root/     config.pbtxt: what REPO/<product>/ holds while V is served
    REPO/<step>/V/                   a private step's version V (weights, model.py, tokenizer...)
    REPO/<step>/V/model_root/        config.pbtxt and labels.txt as REPO/<step>/ holds them while V is served
    REPO/<step>/config.pbtxt         version_policy { specific { versions: [U, V] } } (or [V], see below)
    REPO/<shared>/1/                 shared pre-processing (text_tokenize, image_preprocess, ...): one
                                     version, called by every product that tokenises/decodes the same way

Why this shape. The served version is written in the configs, never inferred from the
newest folder, so a server restart serves the same thing and a rollback survives it.
Triton keeps one config per model for all its versions, so each version carries its own
config (`model_root/`) and becoming active copies it to the model's root. Pinning the
ensemble's steps means a product version always runs with its own encoder and
post-processing (labels), never a mix.

Zero failed requests on a switch (measured: docs/architecture.md, "Versions"): when a
private step's new config equals the served one apart from the version policy and
instance count, and its root files (labels.txt) are the same, the step lists both
versions: the ensemble still pinned to U keeps finding U while V loads, and Triton swaps
the ensemble from U to V once V is ready. The previous version then stays loaded until the
next switch (an instant, failure-free rollback). When the configs differ (another label
set, INT8 on or off), only V is listed, and loading the ensemble (never a step on its
own first, see `reload_order`) reloads the step and the ensemble back to back.

Three modules, one job each: reading versions (version_reading.py), switching the served
one (version_switch.py), the product card (cards.py). This module names them together,
as callers have always imported them.
"""
from __future__ import annotations

from mmserve.exporters.cards import (  # noqa: F401
    Release,
    build_card,
    checkpoint_facts,
)
from mmserve.exporters.triton_config import (  # noqa: F401
    read_config,
)
from mmserve.exporters.version_reading import (  # noqa: F401
    DEFAULT_KEEP,
    VersionNotFoundError,
    active_version,
    next_version,
    pin_steps,
    pipelines_of,
    policy_versions,
    private_steps,
    product_versions,
    read_card,
    recorded_versions,
    reload_order,
    set_policy,
    step_version,
    version_folders,
)
from mmserve.exporters.version_switch import (  # noqa: F401
    COPY_MARK,
    VersionLoadError,
    co_loadable,
    plan_activation,
    serve_active,
    set_active_version,
)
from mmserve.repository_layout import CARD_FILE, CONFIG_FILE, MODEL_ROOT  # noqa: F401 - the names' home
