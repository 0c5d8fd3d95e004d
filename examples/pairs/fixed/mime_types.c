#include <stdio.h>
#include <string.h>
#include <strings.h>

struct mime_entry {
    const char *ext;
    const char *type;
    int         compressible;
};

static const struct mime_entry MIME_TABLE[] = {
    { "html",  "text/html",              1 },
    { "css",   "text/css",               1 },
    { "js",    "application/javascript", 1 },
    { "json",  "application/json",       1 },
    { "svg",   "image/svg+xml",          1 },
    { "png",   "image/png",              0 },
    { "jpg",   "image/jpeg",             0 },
    { "woff2", "font/woff2",             0 },
};

static const char *file_extension(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(path, '.');

    if (dot == NULL || (slash != NULL && dot < slash))
        return "";
    return dot + 1;
}

const struct mime_entry *mime_lookup(const char *ext)
{
    size_t i;

    for (i = 0; i < sizeof(MIME_TABLE) / sizeof(MIME_TABLE[0]); i++)
        if (strcasecmp(MIME_TABLE[i].ext, ext) == 0)
            return &MIME_TABLE[i];
    return NULL;
}

/* Writes the Content-Type header line for a static file response. */
int format_content_type(const char *path, char *out, size_t outlen)
{
    const struct mime_entry *m = mime_lookup(file_extension(path));
    const char *charset;
    const char *type;
    int n;

    type = m != NULL ? m->type : "application/octet-stream";
    charset = strncmp(type, "text/", 5) == 0 ? "; charset=utf-8" : "";
    n = snprintf(out, outlen, "Content-Type: %s%s\r\n", type, charset);
    return (n < 0 || (size_t)n >= outlen) ? -1 : n;
}

int should_compress(const char *path)
{
    const struct mime_entry *m = mime_lookup(file_extension(path));

    return m != NULL && m->compressible;
}
