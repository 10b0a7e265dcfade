"""What an app embeds: the sync and asyncio services, the durable disk queue, the
HTTP transport, the real-time client, persistence, privacy and identity.

Imports ``innkt_analytics.shared`` only, never ``innkt_analytics.server`` (lint-imports,
scripts/check). Private modules: users import from ``innkt_analytics``.
"""
