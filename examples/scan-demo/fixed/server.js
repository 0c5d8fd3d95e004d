const express = require("express");
const path = require("path");
const escapeHtml = require("escape-html");
const app = express();

app.get("/search", (req, res) => {
  res.send("<h1>Results for " + escapeHtml(req.query.q) + "</h1>");
});

function readUpload(root, name) {
  const full = path.resolve(root, name);
  if (!full.startsWith(path.resolve(root) + path.sep)) {
    throw new Error("invalid file name");
  }
  return require("fs").readFileSync(full);
}

module.exports = { app, readUpload };
