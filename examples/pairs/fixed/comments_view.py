import html
import sqlite3

from flask import Flask, g

app = Flask(__name__)
DATABASE = "blog.db"


def get_db():
    if "db" not in g:
        g.db = sqlite3.connect(DATABASE)
        g.db.row_factory = sqlite3.Row
    return g.db


def render_comment(row):
    author = html.escape(row["author"])
    body = html.escape(row["body"]).replace("\n", "<br>")
    return (f'<li class="comment"><span class="author">{author}</span>'
            f'<p>{body}</p><time>{row["created_at"]}</time></li>')


@app.route("/posts/<int:post_id>/comments")
def post_comments(post_id):
    db = get_db()
    post = db.execute("SELECT title FROM posts WHERE id = ?", (post_id,)).fetchone()
    if post is None:
        return "<h1>Not found</h1>", 404
    rows = db.execute(
        "SELECT author, body, created_at FROM comments WHERE post_id = ? ORDER BY created_at",
        (post_id,),
    ).fetchall()
    items = "\n".join(render_comment(r) for r in rows)
    return f"<h2>Comments on {html.escape(post['title'])}</h2>\n<ul>\n{items}\n</ul>"


@app.teardown_appcontext
def close_db(_exc):
    db = g.pop("db", None)
    if db is not None:
        db.close()
