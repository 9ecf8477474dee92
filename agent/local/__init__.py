"""``python -m agent run`` and ``check``: a job template on this machine.

``_localrun`` plans and runs a session directly, ``_farmrun`` runs the same plan
through an in-process mock farm and worker, ``_render`` prints what happens,
``_templates`` loads and checks templates; ``_cmd_run`` and ``_cmd_check`` are
the commands.
"""
