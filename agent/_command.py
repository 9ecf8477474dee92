"""Start one plain command for a job: ``python -I -S _command.py '<json>'``.

``JobSpec.from_command`` runs commands through this small launcher so that a
command of any length, with its own working directory, is still one OpenJD
task of a session: the task's command line is fixed, and the command itself
arrives as one JSON value (``{"argv": [...], "cwd": "..."}``), which OpenJD
format strings never look into. The launcher changes directory and replaces
itself with the command (``execvp``), so the command keeps the launcher's
process, process group and containment tag, and a cancel reaches it directly.

When the command cannot be started it says why with ``openjd_fail:`` and exits
as a shell would (127 for a command that is not found, 126 otherwise).

Standard library only, and nothing imported from farmhand: it runs isolated
(``-I -S``), possibly as another user.
"""

import errno
import json
import os
import sys


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    command = spec["argv"]
    cwd = spec.get("cwd")
    if cwd:
        try:
            os.chdir(cwd)
        except OSError as exc:
            print(f"openjd_fail: cannot change to directory {cwd}: {exc.strerror}", flush=True)
            return 126
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"openjd_fail: cannot start {command[0]}: {exc.strerror}", flush=True)
        return 127 if exc.errno == errno.ENOENT else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv))
