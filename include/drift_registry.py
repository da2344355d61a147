"""Things and certificates the registry has and the inventory does not, found with listings, bounded.

`things_unknown_to_inventory` is pre-flight's question: which of a batch's thing names already exist in AWS
IoT without an inventory record? Only names the inventory does not know are asked about. Per product
(thing type) it lists the things of the type whose serial-number attribute starts with the batch's common
serial prefix (ListThings, 250 per page), which costs a page per 250 matching things, however large the
batch. When that listing would cost more than asking per name (a quarter of the names, in pages), it stops
and asks the rest by DescribeThing: never more than 1.25 calls per name, usually a few calls per batch.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from include.aws_errors import is_not_found
from include.catalog import Catalog, Product
from include.inventory import Inventory
from include.lifecycle_registry import Calls
from include.lifecycle_store import LifecycleStore

LIST_PAGE = 250  # ListThings' largest page
DESCRIBE_SHARE = 0.25  # list pages allowed per name before asking per name is cheaper


@dataclass
class UnknownThings:
    """Thing names of the batch that exist in AWS IoT with no inventory record, and what finding cost."""

    found: dict[str, dict[str, Any]] = field(default_factory=dict)  # thing name -> ListThings/Describe item
    checked: int = 0  # names the inventory did not know (the ones asked about)
    calls: int = 0
    listed_groups: int = 0  # product groups answered by one bounded listing
    described: int = 0  # names asked one by one (a listing would have cost more)


def serial_attribute(product: Product | None) -> str | None:
    """The thing attribute the product fills from the manifest's serial_number column, if any."""
    if product is None:
        return None
    return next((a.name for a in product.attributes if a.column == "serial_number"), None)


def things_unknown_to_inventory(
    iot: Any,
    inventory: Inventory,
    devices: pa.Table,
    catalog: Catalog,
    *,
    calls: Calls | None = None,
) -> UnknownThings:
    """Which of these devices (a table of thing_name, model, serial_number) exist in IoT without an inventory
    record. Columnar: a batch of a million names costs set operations, not a Python step per name."""
    names = devices.column("thing_name")
    known = LifecycleStore(inventory).known_names(names.to_pylist())
    if known:
        devices = devices.filter(pc.invert(pc.is_in(names, value_set=pa.array(sorted(known), pa.string()))))
    calls = calls or Calls(iot)
    before = calls.total
    result = UnknownThings()
    groups: dict[tuple[str | None, str | None], list[pa.Table]] = defaultdict(list)
    for model in pc.unique(devices.column("model")).to_pylist():  # a batch has few models, rows are many
        product = catalog.get(model)
        key = (product.thing_type if product else None, serial_attribute(product))
        groups[key].append(devices.filter(pc.equal(devices.column("model"), model)))
    for (thing_type, attribute), parts in sorted(groups.items(), key=lambda item: str(item[0])):
        members = pa.concat_tables(parts)
        result.checked += members.num_rows
        wanted = members.column("thing_name")
        prefix = _common_prefix(members.column("serial_number")) if attribute else ""
        budget = max(1, math.floor(members.num_rows * DESCRIBE_SHARE))
        listed = _list_within(calls, thing_type, attribute, prefix, budget)
        if listed is not None:
            result.listed_groups += 1
            listed_names = pa.array([t["thingName"] for t in listed], pa.string())
            hits = set(listed_names.filter(pc.is_in(listed_names, value_set=wanted)).to_pylist())
            result.found.update({t["thingName"]: t for t in listed if t["thingName"] in hits})
            continue
        for name in sorted(set(wanted.to_pylist())):
            result.described += 1
            try:
                result.found[name] = calls("describe_thing", thingName=name)
            except Exception as exc:
                if not is_not_found(exc):
                    raise
    result.calls = calls.total - before
    return result


def _common_prefix(serials: pa.ChunkedArray) -> str:
    """The longest prefix every serial shares: that of the smallest and the largest (nulls as "")."""
    if serials.null_count:
        return ""
    bounds = pc.min_max(serials)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return "" if low is None or high is None else os.path.commonprefix([low, high])


def _list_within(
    calls: Calls, thing_type: str | None, attribute: str | None, prefix: str, pages: int
) -> list[dict[str, Any]] | None:
    """The things of the type (with the attribute prefix), if they fit in `pages` pages; else None."""
    kwargs: dict[str, Any] = {"maxResults": LIST_PAGE}
    if thing_type:
        kwargs["thingTypeName"] = thing_type
    if attribute and prefix:
        kwargs.update(attributeName=attribute, attributeValue=prefix, usePrefixAttributeValue=True)
    things: list[dict[str, Any]] = []
    for _ in range(pages):
        page = calls("list_things", **kwargs)
        things += page.get("things", [])
        if not page.get("nextToken"):
            return things
        kwargs["nextToken"] = page["nextToken"]
    return None


def things_of_types(calls: Calls, thing_types: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every thing of these thing types (ListThings by type, paged)."""
    for thing_type in sorted(set(thing_types)):
        yield from calls.pages("list_things", "things", thingTypeName=thing_type, maxResults=LIST_PAGE)


def certificates_of_cas(calls: Calls, ca_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every device certificate signed by these registered CAs (ListCertificatesByCA, paged)."""
    for ca_id in sorted(set(ca_ids)):
        yield from calls.pages(
            "list_certificates_by_ca", "certificates", marker=True, caCertificateId=ca_id, pageSize=LIST_PAGE
        )
