"""The worker host: the agent that works a Deadline farm.

``_worker`` wires the actor tree and holds the stop contract; ``_embed`` and
``_cmd_worker`` start it from a program or the command line; ``_bootstrap``,
``_hostinfo``, ``_imds``, ``_queuecreds``, ``_state``, ``_health`` and
``_logsink`` are the host's parts; ``_config`` its settings. The public names
are exported by ``agent``.
"""
