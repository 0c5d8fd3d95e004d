from flask import Flask
from jinja2 import DictLoader, Environment

from accounts.store import load_profile

app = Flask(__name__)

TEMPLATES = {
    "profile.html": (
        '<section class="profile">\n'
        '  <span class="avatar">{{ user.display_name|initials }}</span>\n'
        "  <h2>{{ user.display_name }}</h2>\n"
        '  <p class="bio">{{ user.bio }}</p>\n'
        "  <ul>{% for tag in user.tags %}<li>{{ tag }}</li>{% endfor %}</ul>\n"
        "</section>\n"
    ),
    "missing.html": "<p>No profile named {{ username }}.</p>\n",
}

_env = None


def build_environment():
    env = Environment(loader=DictLoader(TEMPLATES), trim_blocks=True)
    env.filters["initials"] = lambda name: "".join(part[:1] for part in name.split()).upper()
    return env


def _get_env():
    global _env
    if _env is None:
        _env = build_environment()
    return _env


@app.route("/u/<username>")
def show_profile(username):
    profile = load_profile(username)
    if profile is None:
        return _get_env().get_template("missing.html").render(username=username), 404
    return _get_env().get_template("profile.html").render(user=profile)
