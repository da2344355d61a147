"""The README's operations list is generated from the route table and is up to date."""

from __future__ import annotations

from iot_emulator import operations_doc, wire


def test_readme_operations_section_is_up_to_date() -> None:
    readme = operations_doc.README.read_text(encoding="utf-8")
    assert operations_doc.render(readme) == readme, "run: python -m iot_emulator.operations_doc"


def test_listed_operations_are_exactly_the_implemented_routes() -> None:
    section = operations_doc.operations_markdown()
    names = {r.name for r in operations_doc.implemented_operations()}
    assert {"CreateThing", "StartThingRegistrationTask", "RegisterCACertificate"} <= names
    assert "DescribeAccountAuditConfiguration" not in names
    for route in wire.all_routes():
        assert (f"| {route.name} | `{route.method} {route.uri}` |" in section) == (route.name in names)
