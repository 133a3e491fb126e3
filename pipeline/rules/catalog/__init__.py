"""The built-in rules: Python classes registered by id (importing this package registers them)
and YAML rules in ``*.yaml`` beside them (loaded by :func:`pipeline.rules.config.parse_rules_config`).
"""

from pipeline.rules.catalog import api_keys, auth, block_list, data, members, pipeline_health, webhooks

__all__ = ["api_keys", "auth", "block_list", "data", "members", "pipeline_health", "webhooks"]
