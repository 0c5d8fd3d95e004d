import sqlite3
import subprocess


def find_user(db: sqlite3.Connection, name: str):
    query = "SELECT id, name, email FROM users WHERE name = ?"
    return db.execute(query, (name,)).fetchone()


def archive_logs(directory: str) -> int:
    return subprocess.run(["tar", "czf", "/tmp/logs.tgz", "--", directory], check=False).returncode
