from decimal import Decimal

from lxml import etree

NS = {"inv": "urn:example:invoice:1"}


def make_parser():
    return etree.XMLParser(load_dtd=False, resolve_entities=False, no_network=True,
                           remove_blank_text=True)


def _text(node, path):
    value = node.findtext(path, namespaces=NS)
    return value.strip() if value else ""


def parse_invoice(xml_bytes):
    """xml_bytes is the body of an invoice document uploaded by a supplier."""
    root = etree.fromstring(xml_bytes, parser=make_parser())
    lines = []
    for item in root.iterfind("inv:Line", namespaces=NS):
        lines.append({
            "description": _text(item, "inv:Description"),
            "quantity": int(_text(item, "inv:Quantity") or 0),
            "unit_price": Decimal(_text(item, "inv:UnitPrice") or "0"),
        })
    return {
        "number": _text(root, "inv:Number"),
        "supplier": _text(root, "inv:Supplier/inv:Name"),
        "lines": lines,
        "total": sum((ln["quantity"] * ln["unit_price"] for ln in lines), Decimal("0")),
    }
