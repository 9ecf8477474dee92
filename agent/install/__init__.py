"""``python -m agent install`` / ``uninstall``: set a host up to run the worker as a service.

The steps of the official agent's ``install-deadline-worker`` (the agent's user, the
job users' group, sudoers rules, directories with their owners and modes,
``worker.toml``, a systemd unit that starts on boot and restarts on a crash), with
its options where they apply, and three more: ``--dry-run`` prints every change
and makes none; a second run changes nothing (each step looks at the host first);
``uninstall`` takes the service and the sudoers rules away (``--purge``: the
directories, the configuration, the user and the group too).

``plan_install`` and ``plan_uninstall`` look at the host and return the changes it
needs, each with a line that says what it does; ``apply`` makes them. ``--root
DIR`` works on a tree below ``DIR`` instead of ``/`` (users and groups through
``useradd --prefix``), for images and for tests; the service manager is then left
alone.
"""

from ._plan import (
    Change,
    Host,
    InstallError,
    InstallOptions,
    apply,
    plan_install,
    plan_uninstall,
    render_unit,
)

__all__ = [
    "Change",
    "Host",
    "InstallError",
    "InstallOptions",
    "apply",
    "plan_install",
    "plan_uninstall",
    "render_unit",
]
