"""MQTT topic names and filters: validity and matching, with the `$` rule and AWS IoT's reserved topics."""

from __future__ import annotations

MAX_TOPIC_BYTES = 256  # AWS IoT's limit on topic names and filters (UTF-8 bytes)


def valid_topic_name(topic: str) -> bool:
    """A name a PUBLISH may use: non-empty, no wildcards, within AWS IoT's size limit."""
    return bool(topic) and "+" not in topic and "#" not in topic and len(topic.encode()) <= MAX_TOPIC_BYTES


def valid_topic_filter(topic_filter: str) -> bool:
    """A filter a SUBSCRIBE may use: ``+`` alone in a level, ``#`` alone in the last level."""
    if not topic_filter or len(topic_filter.encode()) > MAX_TOPIC_BYTES:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` is matched by ``topic_filter``; a wildcard never matches a leading `$` level.

    [MQTT-4.7.2-1]: `#` and `+/...` do not match topics starting with `$`, so no wildcard subscription sees
    reserved topics; only a filter that spells the `$` level out can.
    """
    if topic.startswith("$") and topic_filter[:1] in ("#", "+"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def is_reserved(topic: str) -> bool:
    """A topic of AWS IoT's own services (fleet provisioning, shadows...): never routed between clients."""
    return topic.startswith("$")
