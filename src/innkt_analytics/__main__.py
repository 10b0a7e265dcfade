"""``python -m innkt_analytics`` is the ``innkt-analytics`` command."""

from innkt_analytics.server._cli import main

main()
