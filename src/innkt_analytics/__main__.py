"""``python -m innkt_analytics`` is the ``innkt-analytics`` command.

The CLI is imported only when this runs as the main module: importing the package
(or this module, e.g. by a tool that walks the package) must not pull in the server.
"""

if __name__ == "__main__":
    from innkt_analytics.server._cli import main

    main()
