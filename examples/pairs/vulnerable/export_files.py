import os
from datetime import datetime, timezone

from flask import Flask, abort, jsonify, request, send_file

app = Flask(__name__)
EXPORT_ROOT = os.environ.get("EXPORT_ROOT", "/srv/reports/exports")


def _describe(entry):
    info = entry.stat()
    return {
        "name": entry.name,
        "size": info.st_size,
        "modified": datetime.fromtimestamp(info.st_mtime, tz=timezone.utc).isoformat(),
    }


@app.route("/exports")
def list_exports():
    with os.scandir(EXPORT_ROOT) as entries:
        files = [_describe(e) for e in entries if e.is_file()]
    files.sort(key=lambda item: item["modified"], reverse=True)
    return jsonify(files)


@app.route("/exports/download")
def download_export():
    name = request.args.get("name", "")
    if not name:
        abort(400, "missing name")
    path = os.path.join(EXPORT_ROOT, name)
    if not os.path.isfile(path):
        abort(404)
    return send_file(path, as_attachment=True, download_name=os.path.basename(path))
