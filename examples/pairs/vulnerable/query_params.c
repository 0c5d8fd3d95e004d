#include <stdlib.h>
#include <string.h>

#define QP_MAX 32

typedef struct {
    char *key;
    char *value;
} QueryParam;

typedef struct {
    QueryParam items[QP_MAX];
    size_t     count;
} QueryParams;

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void url_decode_inplace(char *s)
{
    char *out = s;

    while (*s) {
        if (*s == '%' && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
            *out++ = (char)(hexval(s[1]) * 16 + hexval(s[2]));
            s += 3;
        } else {
            *out++ = (*s == '+') ? ' ' : *s;
            s++;
        }
    }
    *out = '\0';
}

static void split_pair(char *item, QueryParam *qp)
{
    char *eq = strchr(item, '=');

    *eq = '\0';
    qp->key = item;
    qp->value = eq + 1;
    url_decode_inplace(qp->key);
    url_decode_inplace(qp->value);
}

/* Splits a raw query string ("a=1&b=two") in place. */
int query_parse(char *query, QueryParams *out)
{
    char *save = NULL;
    char *item;

    out->count = 0;
    for (item = strtok_r(query, "&", &save); item != NULL; item = strtok_r(NULL, "&", &save)) {
        if (out->count == QP_MAX)
            return -1;
        split_pair(item, &out->items[out->count++]);
    }
    return 0;
}

const char *query_get(const QueryParams *qp, const char *key)
{
    size_t i;

    for (i = 0; i < qp->count; i++)
        if (strcmp(qp->items[i].key, key) == 0)
            return qp->items[i].value;
    return NULL;
}
