import sqlite3
from dataclasses import dataclass


@dataclass
class StockItem:
    sku: str
    name: str
    quantity: int
    location: str


class InventoryRepository:
    COLUMNS = "sku, name, quantity, location"

    def __init__(self, path):
        self.conn = sqlite3.connect(path)

    def get(self, sku):
        row = self.conn.execute(
            f"SELECT {self.COLUMNS} FROM stock WHERE sku = ?", (sku,)
        ).fetchone()
        return StockItem(*row) if row else None

    def by_location(self, location):
        cur = self.conn.execute(
            "SELECT %s FROM stock WHERE location = '%s' ORDER BY sku" % (self.COLUMNS, location)
        )
        return [StockItem(*r) for r in cur.fetchall()]

    def low_stock(self, threshold=5):
        cur = self.conn.execute(
            f"SELECT {self.COLUMNS} FROM stock WHERE quantity < ? ORDER BY quantity", (threshold,)
        )
        return [StockItem(*r) for r in cur.fetchall()]

    def adjust(self, sku, delta):
        with self.conn:
            self.conn.execute("UPDATE stock SET quantity = quantity + ? WHERE sku = ?", (delta, sku))
