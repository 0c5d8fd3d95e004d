const express = require("express");
const path = require("path");
const app = express();

app.get("/search", (req, res) => {
  res.send("<h1>Results for " + req.query.q + "</h1>");
});

function readUpload(root, name) {
  return require("fs").readFileSync(path.join(root, name));
}

module.exports = { app, readUpload };
