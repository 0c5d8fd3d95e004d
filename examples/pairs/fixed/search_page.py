from html import escape
from urllib.parse import quote

from flask import Flask, request

from shop.catalog import search_products

app = Flask(__name__)

PAGE = """<!doctype html>
<html><head><title>Search</title></head>
<body>
<form action="/search"><input name="q" value="{query}"><button>Go</button></form>
{content}
</body></html>"""


def product_row(product):
    link = "/products/" + quote(str(product.sku))
    return f'<li><a href="{link}">{escape(product.name)}</a> {product.price:.2f} EUR</li>'


@app.route("/")
def index():
    return PAGE.format(query="", content="")


@app.route("/search")
def search():
    query = request.args.get("q", "").strip()
    results = search_products(query, limit=50) if query else []
    shown = escape(query)
    if results:
        content = "<ul>" + "".join(product_row(p) for p in results) + "</ul>"
    else:
        content = f"<p>No products match <em>{shown}</em>.</p>"
    return PAGE.format(query=shown, content=content)
