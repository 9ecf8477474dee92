"""botocore's service models, loaded once per process and shared by everyone in it.

The worker's clients (``agent.deadline``) and the mock farm's codec
(``agent.mockfarm._codec``) read the same ``deadline`` and ``logs`` models; in
``python -m agent run`` both live in one process, and each model is parsed once
here instead of once per reader (a few MiB and tens of milliseconds each).

The models come from botocore's data loader, as ``botocore.session.Session``'s
``get_service_model`` reads them (the same search path, ``AWS_DATA_PATH``
included, the same latest API version, the same SDK extras), without building
a session: a session imports botocore's client machinery (clients, waiters,
paginators, docs, credential providers) that nothing reading a model needs.
botocore registers no handler of its own on the ``service-data-loaded`` event a
session emits, so the model is the same.
"""

from __future__ import annotations

import functools
import os

import botocore.loaders
import botocore.model


@functools.cache
def _loader() -> botocore.loaders.Loader:
    # As botocore's session makes its ``data_loader`` (from the ``data_path``
    # setting, which is ``AWS_DATA_PATH`` in the environment).
    return botocore.loaders.create_loader(os.environ.get("AWS_DATA_PATH"))


@functools.cache
def service_model(service: str) -> botocore.model.ServiceModel:
    """botocore's model for ``service`` (latest API version), loaded once per process."""
    data = _loader().load_service_model(service, "service-2")
    return botocore.model.ServiceModel(data, service_name=service)
