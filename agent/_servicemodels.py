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

It reads them as ``Loader.load_service_model`` does (the latest version of
``service-2``, then its SDK extras merged in) but without that method's first
step, ``list_available_services``, which lists and stats every service
directory on the search path (about 450 with botocore's own data, ~45 ms) only
to check that the name is one of them: ``determine_latest_version`` looks in
the service's own directories and fails just as surely for an unknown name.

Its files are parsed into plain dicts, not the ``OrderedDict`` botocore's
``JSONFileLoader`` makes (dicts keep their order, and nothing in botocore's
model asks for more): ``deadline`` and ``logs`` take 2.9 MiB instead of 4.6 and
parse in half the time (``benchmarks/RESULTS.md``, issue 16).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from collections.abc import Callable
from typing import Any

import botocore.exceptions
import botocore.loaders
import botocore.model

#: botocore's ``JSONFileLoader`` reads ``NAME.json``, else ``NAME.json.gz``.
_DECODERS: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
    (".json", bytes),
    (".json.gz", gzip.decompress),  # at once: a third faster than reading a GzipFile
)


class _PlainJSONFileLoader:
    """botocore's ``JSONFileLoader`` (the ``file_loader`` of its ``Loader``), into plain dicts."""

    def exists(self, file_path: str) -> bool:
        return any(os.path.isfile(file_path + extension) for extension, _ in _DECODERS)

    def load_file(self, file_path: str) -> Any:
        for extension, decode in _DECODERS:
            path = file_path + extension
            if os.path.isfile(path):
                with open(path, "rb") as file:
                    return json.loads(decode(file.read()).decode("utf-8"))
        return None


@functools.cache
def _loader() -> botocore.loaders.Loader:
    # As botocore's session makes its ``data_loader`` (from the ``data_path``
    # setting, which is ``AWS_DATA_PATH`` in the environment), reading plain dicts.
    loader = botocore.loaders.create_loader(os.environ.get("AWS_DATA_PATH"))
    loader.file_loader = _PlainJSONFileLoader()
    return loader


@functools.cache
def service_model(service: str) -> botocore.model.ServiceModel:
    """botocore's model for ``service`` (latest API version), loaded once per process."""
    loader = _loader()
    version = loader.determine_latest_version(service, "service-2")
    data = loader.load_data(f"{service}/{version}/service-2")
    extras = []
    for kind in loader.extras_types:
        try:
            extras.append(loader.load_data(f"{service}/{version}/service-2.{kind}-extras"))
        except botocore.exceptions.DataNotFoundError:
            pass
    botocore.loaders.ExtrasProcessor().process(data, extras)
    return botocore.model.ServiceModel(data, service_name=service)
