from datetime import date

PAGE_SIZE = 25


class OrderQueries:
    """Read-side queries for the customer order history API (psycopg2 connection)."""

    def __init__(self, conn):
        self._conn = conn

    def _fetch(self, sql, params=()):
        with self._conn.cursor() as cur:
            cur.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def for_customer(self, customer_id, sort="created_at", descending=True, page=1):
        direction = "DESC" if descending else "ASC"
        offset = max(page - 1, 0) * PAGE_SIZE
        sql = (
            "SELECT id, status, total_cents, created_at FROM orders "
            f"WHERE customer_id = %s ORDER BY {sort} {direction} LIMIT %s OFFSET %s"
        )
        return self._fetch(sql, (customer_id, PAGE_SIZE, offset))

    def totals_between(self, start: date, end: date):
        sql = (
            "SELECT customer_id, SUM(total_cents) AS total FROM orders "
            "WHERE created_at >= %s AND created_at < %s GROUP BY customer_id"
        )
        return self._fetch(sql, (start, end))

    def cancel(self, order_id):
        with self._conn, self._conn.cursor() as cur:
            cur.execute("UPDATE orders SET status = 'cancelled' WHERE id = %s AND status = 'open'",
                        (order_id,))
            return cur.rowcount == 1
