import os
import sqlite3


def find_user(db: sqlite3.Connection, name: str):
    query = f"SELECT id, name, email FROM users WHERE name = '{name}'"
    return db.execute(query).fetchone()


def archive_logs(directory: str) -> int:
    return os.system("tar czf /tmp/logs.tgz " + directory)
