"""The admin console in the browser (``admin_web`` in the configuration; docs/console.md).

Served by the gateway process itself (aiohttp on its event loop), off by default and bound
to localhost by default. Pages are rendered on the server from Jinja2 templates with
autoescaping; there is no script. The console reads and changes the gateway through the
objects the CLI uses (see :mod:`gateway.admin_web.ports`).
"""
