"""The worker host: the agent that works a Deadline farm.

``_worker`` wires the actor tree and holds the stop contract; ``_embed`` and
``_cmd_worker`` start it from a program or the command line; ``_bootstrap``,
``_hostinfo``, ``_imds``, ``_queuecreds``, ``_state``, ``_health`` and
``_logsink`` are the host's parts; ``_pause`` pauses and resumes the worker,
for ``_throttle`` (the error throttle), ``_workhours`` and ``_idle`` (logind's
idle hint); ``_sessionwatch`` reads the sessions' events for the throttle and
``_costs`` (what actions cost, for ``/metrics``); ``_endpoints`` resolves
where the farm is; ``_config`` holds its settings. The public names are exported by ``agent``.
"""
