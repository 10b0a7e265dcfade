"""What the SDK and the server both use: the wire protocol (msgspec Structs), the
real-time message codec and connection states, ids, the exception tree, the retry
policy, the version and the backup file format.

Imports nothing from ``innkt_analytics.sdk`` or ``innkt_analytics.server`` (lint-imports,
scripts/check). Private modules: users import from ``innkt_analytics``.
"""
