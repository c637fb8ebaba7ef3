"""clusterbus.plugins: the built-in plugins, one sub-package each.

Each is registered through the ``clusterbus`` entry-point group in pyproject.toml, exactly
like a third-party plugin, so the built-ins prove the plugin API.
"""
